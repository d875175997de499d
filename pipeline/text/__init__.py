"""Japanese text: MeCab tokens, sentence boundaries, citation markers."""
