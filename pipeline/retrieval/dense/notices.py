"""What the page says when dense retrieval is not loaded: light, so the retrieval service
can name the reason without importing the dense path's heavy libraries."""

from pipeline.core.schema import Notice
from pipeline.settings.model import Settings

#: Why dense retrieval is not loaded: only the English stand-in model is here and nobody
#: asked for dense or hybrid search (``auto`` uses BM25 then). Asking loads it.
DENSE_NOT_REQUESTED = "dense_not_requested"


def dense_not_requested(settings: Settings, reason_en: str) -> Notice:
    """Dense retrieval not loaded: the configured model is not here, and the English
    stand-in is built only when someone asks for dense or hybrid search."""
    return Notice(
        code=DENSE_NOT_REQUESTED,
        en=f"{settings.embedding.model} is not here ({reason_en}); searching with BM25. Asking for dense or hybrid "
        "search builds a dense index with the bundled English model instead",
        ja=f"埋め込みモデル {settings.embedding.model} がないため、BM25 で検索しています。"
        "`python -m pipeline.download` で取得すると密ベクトル検索とハイブリッド検索が使えます。"
        "検索方式に dense か hybrid を選ぶと、同梱の英語向けモデルで索引を作ります（日本語の精度は低めです）。",
    )
