"""Server fixtures: the shared tiny recognizer and live servers on free loopback ports."""

from __future__ import annotations

import contextlib

import pytest

from serve.app import create_app
from serve.limits import ServerSettings
from serve_helpers import live_server, tiny_recognizer


@pytest.fixture(scope="session")
def recognizer():
    return tiny_recognizer()


@pytest.fixture
def make_server(recognizer):
    """make_server(**settings) → (host:port, app) of a live server; stopped after the test."""
    stack = contextlib.ExitStack()

    def make(**settings):
        app = create_app(recognizer, ServerSettings(**settings))
        addr, _server = stack.enter_context(live_server(app))
        return addr, app

    with stack:
        yield make
