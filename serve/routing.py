"""Which model decodes a request: the API key it carries picks the base model or an adapted one.

A server has its base model (`--model`) and, with `--adapted FILE` (serve/adapted.py), models
adapted to customers' voices, each reached by its own keys. `KeyRouter.route(key)` answers
  - the adapted model of `key`, when the file maps it to one;
  - else the base model, when `key` passes `--api-key` (always, when no `--api-key` is set: an
    unauthenticated client, or one whose key the file does not list, gets the base model);
  - else None: unauthorized.
Keys are held only as SHA-256 digests: a lookup then takes the same time whatever prefix of a
key a caller guesses (a digest reveals nothing of the key), and no structure of the server holds a
key in plain text that a log line or a metric label could print. Models are named by `ServedModel.id`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping

from mtspeech.serve.limits import key_matches
from mtspeech.streaming import StreamingRecognizer

BASE_ID = "base"


@dataclass(frozen=True, eq=False)
class ServedModel:
    """A model the server decodes with. `id`: its short name in metrics and logs, never a key
    ("base", or "adapted-" and the start of its file's SHA-256)."""

    id: str
    recognizer: StreamingRecognizer


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRouter:
    """API key → the model that decodes its streams (see the module doc)."""

    def __init__(self, base: ServedModel, api_key: str | None = None,
                 adapted: Mapping[str, ServedModel] | None = None) -> None:
        adapted = adapted or {}
        if api_key is not None and api_key in adapted:
            raise ValueError("an adapted model's key is also the server's --api-key: give each customer a key "
                             "of their own")
        self.base = base
        self.api_key = api_key
        self._adapted = {key_digest(k): m for k, m in adapted.items()}
        # every model served, by id: the base first (metrics list them all from the start)
        self.models: dict[str, ServedModel] = {base.id: base, **{m.id: m for m in adapted.values()}}

    @property
    def needs_key(self) -> bool:
        """Whether a request without a key is refused (only with `--api-key`)."""
        return self.api_key is not None

    def route(self, key: str | None) -> ServedModel | None:
        """The model decoding a request that carries `key` (None: none), or None: unauthorized."""
        if key is not None:
            model = self._adapted.get(key_digest(key))
            if model is not None:
                return model
        return self.base if key_matches(key, self.api_key) else None
