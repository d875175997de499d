"""Text from the corpus, the model or the user, made safe to put into Markdown.

CommonMark lets a backslash escape every ASCII punctuation character, so escaping all of
them shows any text literally, in an exported file as on a page; that also covers
Streamlit's extensions (``$...$`` LaTeX, ``:red[...]`` colours, ``:material/x:`` icons).
"""

from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>$:~&\"'=^%@;,/?])")


def escape_markdown(text: str) -> str:
    """``text`` as literal Markdown; line breaks are kept as hard breaks."""
    escaped = _PUNCTUATION.sub(r"\\\1", text)
    return escaped.replace("\n", "  \n")
