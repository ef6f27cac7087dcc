"""Server fixtures: the shared tiny recognizer and live servers on free loopback ports."""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path

import pytest

import mtspeech


def _server_of_this_checkout() -> None:
    """`mtspeech.serve` exists only once installed (serve/ is mapped onto it), so running these
    tests with PYTHONPATH on one checkout and an install of another would test that other
    checkout's server: say so instead."""
    checkout = Path(mtspeech.__file__).resolve().parents[1]
    try:
        served = Path(importlib.import_module("mtspeech.serve").__file__).resolve().parent
    except ModuleNotFoundError as e:
        raise RuntimeError(f"mtspeech.serve is not installed: `pip install --no-deps -e {checkout}`") from e
    if (checkout / "serve").is_dir() and served != checkout / "serve":
        raise RuntimeError(f"mtspeech comes from {checkout} but mtspeech.serve from {served}: "
                           f"`pip install --no-deps -e {checkout}` into the environment running the tests")


_server_of_this_checkout()  # at import, before the test modules import mtspeech.serve

from mtspeech.serve.app import create_app  # noqa: E402
from serve_helpers import live_server, steady_settings, tiny_recognizer  # noqa: E402


@pytest.fixture(scope="session")
def recognizer():
    return tiny_recognizer()


@pytest.fixture
def make_server(recognizer):
    """make_server(**settings) → (host:port, app) of a live server; stopped after the test."""
    stack = contextlib.ExitStack()

    def make(**settings):
        app = create_app(recognizer, steady_settings(**settings))
        addr, _server = stack.enter_context(live_server(app))
        return addr, app

    with stack:
        yield make
