"""Is the Hugging Face hub reachable? Answered in a few seconds, before any hub download.

Without this question a closed network costs about a minute per model of huggingface_hub
retries (five per file, with back-off) and two dozen log lines before the first error. With
it, an offline machine goes straight to the local Hugging Face cache and, failing that, to a
message that says the hub is unreachable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import huggingface_hub
from huggingface_hub import constants

#: Seconds the single probe of the hub may take before the hub counts as unreachable.
PROBE_TIMEOUT = 2.5
#: Seconds an answer is trusted: a user who connects (or loses the network) is noticed this late.
RECHECK_AFTER = 60.0
_LOGGERS = ("huggingface_hub", "transformers")

_lock = threading.Lock()
_last: tuple[float, str | None] | None = None  # (monotonic time of the probe, why offline or None)


def hub_offline_reason() -> str | None:
    """None when the hub answers; else a short reason ("HF_HUB_OFFLINE is set", ...).

    ``HF_HUB_OFFLINE`` is honoured without any network access; otherwise one HEAD request to
    the hub endpoint (``HF_ENDPOINT``), cached for `RECHECK_AFTER` seconds and shared by threads.
    """
    global _last
    if huggingface_hub.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    with _lock:
        now = time.monotonic()
        if _last is None or now - _last[0] > RECHECK_AFTER:
            _last = (now, _probe(constants.ENDPOINT))
        return _last[1]


def _probe(endpoint: str) -> str | None:
    try:
        response = huggingface_hub.get_session().head(endpoint, timeout=PROBE_TIMEOUT)
    except Exception as exc:  # httpx, SSL and socket errors all mean the same here
        return f"{endpoint} could not be reached: {type(exc).__name__}"
    if response.status_code >= 500:
        return f"{endpoint} answered with HTTP {response.status_code}"
    return None


@contextmanager
def quiet_hub_logs() -> Iterator[None]:
    """Silence the hub libraries' warnings (retry notices) while a hub load is attempted.

    Their message reaches the user as one line of a raised error instead.
    """
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
