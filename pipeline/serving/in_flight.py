"""Closing a client that other sessions may be using at that moment.

The UI keeps one RAG API client (and one admin client per replica) at a time and closes
the old one when new API settings replace it (``st.cache_resource``'s ``on_release``).
Another session may then be reading an answer or waiting for a reply through it: the
connections go only once the last of those has ended, and whatever is asked of the client
after that is told, in Japanese, to ask again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pipeline.core.errors import DataUnavailableError


class InFlight:
    """Counts the requests (and answers streaming) under way through one client, and lets
    go of its connections with ``release`` once it is closed and none is."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release = release
        self._lock = threading.Lock()
        self._count = 0
        self._closing = False
        self._released = False

    def begin(self) -> None:
        with self._lock:
            if self._released:
                raise DataUnavailableError(
                    en="the RAG API client was replaced by new API settings",
                    ja="API の設定が変わりました。もう一度お試しください。",
                )
            self._count += 1

    def end(self) -> None:
        with self._lock:
            self._count -= 1
            self._release_if_idle()

    @contextmanager
    def request(self) -> Iterator[None]:
        self.begin()
        try:
            yield
        finally:
            self.end()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._release_if_idle()

    def _release_if_idle(self) -> None:
        if self._closing and not self._count and not self._released:
            self._released = True
            self._release()
