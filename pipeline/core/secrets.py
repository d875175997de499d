"""Secrets kept out of what is shown or logged."""

from __future__ import annotations

import re
from collections.abc import Iterable


def masked(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` as ``***`` where it stands alone (not inside a
    longer word: a one-letter key must not mangle every word holding that letter)."""
    for secret in secrets:
        if secret:
            text = re.sub(rf"(?<![\w-]){re.escape(secret)}(?![\w-])", "***", text)
    return text
