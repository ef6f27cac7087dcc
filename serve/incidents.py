"""Internal errors reach clients as a code and an incident id; the detail goes to the log only
(exception text can hold paths, shapes or data a client must not see)."""

from __future__ import annotations

import logging
import secrets

log = logging.getLogger("mtspeech.serve")


def internal_error(what: str, exc: BaseException) -> str:
    """Log `exc` with a fresh incident id; return the client's message, which names only the id."""
    iid = secrets.token_hex(4)
    log.error("%s failed [incident %s]", what, iid, exc_info=exc)
    return f"{what} failed (incident {iid}; the server log has the detail)"
