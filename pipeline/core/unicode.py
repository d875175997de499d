"""Text that can be encoded: lone surrogates replaced.

A JSON body may carry ``"\\ud800"`` and a command line may carry bytes that are not
UTF-8 (Python keeps them as lone surrogates, ``\\udcff``); neither can be encoded as
UTF-8, so MeCab, the database and the terminal fail on them. Every entry point passes
user text through :func:`well_formed`, which replaces each lone surrogate with U+FFFD
(the replacement character), as a UTF-8 decoder does with a bad byte.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


def well_formed(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (``text`` itself when it
    has none, the usual case: one failed encode is the only cost)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Through UTF-16, a high and low surrogate side by side become the character
        # they encode; each lone one becomes U+FFFD.
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text
