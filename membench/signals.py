"""Ctrl-C and SIGTERM routed to a handler of the caller's for a while (`routed`): training defers them to the
end of a step, a session holds them while it packs."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator


@contextlib.contextmanager
def routed(handler: Callable[[int, object], None]) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM call `handler(signum, frame)` instead of their handlers, put back on
    leaving; off the main thread (where signals cannot be caught) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, handler) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, action in previous.items():
            signal.signal(number, action)
