"""Text from the corpus, the model or the user, made safe to put into Markdown.

Streamlit renders Markdown with extensions: ``$...$`` is LaTeX, ``:red[...]`` colours,
``:material/x:`` icons. Escaping every ASCII punctuation character with a backslash
(CommonMark allows it for all of them) shows such text literally; raw HTML is never
enabled for it (no ``unsafe_allow_html``).
"""

from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>$:~&\"'=^%@;,/?])")


def escape_markdown(text: str) -> str:
    """``text`` as literal Markdown; line breaks are kept as hard breaks."""
    escaped = _PUNCTUATION.sub(r"\\\1", text)
    return escaped.replace("\n", "  \n")
