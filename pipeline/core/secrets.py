"""Secrets kept out of what is shown or logged."""

from __future__ import annotations

import re
from collections.abc import Iterable

#: A URL's scheme and user, then its password (``scheme://user:password@host``), matched
#: whether or not the rest of the URL parses.
_URL_PASSWORD = re.compile(r"^([^:/?#]+://[^:/?#@]*):([^/?#@]*)@")


def masked(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` as ``***`` where it stands alone (not inside a
    longer word: a one-letter key must not mangle every word holding that letter)."""
    for secret in secrets:
        if secret:
            text = re.sub(rf"(?<![\w-]){re.escape(secret)}(?![\w-])", "***", text)
    return text


def url_password(url: str) -> str | None:
    """The password written in ``url``, if any."""
    found = _URL_PASSWORD.match(url)
    return found.group(2) if found else None


def shown_url(url: str) -> str | None:
    """``url`` as pages show it: a password in it (``user:pass@host``) hidden."""
    return _URL_PASSWORD.sub(r"\1:***@", url) if url else None
