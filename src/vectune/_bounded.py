"""Calls into clients that can wait for ever (Ray's connect, its job SDK's HTTP requests,
which set no timeout), made to give up after a bounded time."""

from __future__ import annotations

import threading
from typing import Any, Callable


def within(seconds: float, fn: Callable[..., Any], *args, expired: Callable[[], BaseException], **kwargs) -> Any:
    """`fn(*args, **kwargs)`, or `expired()` raised once `seconds` pass without an answer.

    The call runs in a daemon thread the caller stops waiting for (a socket read cannot be
    interrupted from outside); its own exception, if it ends with one, is re-raised here.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"vectune-bounded-{getattr(fn, '__name__', 'call')}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise expired()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
