"""Where data and model files come from: a bundled folder, a local mirror, or the hub.

A repository named ``owner/name`` is looked up, in order, as

1. ``bundled:<name>``: a folder shipped inside this package (the demo corpus);
2. an existing local directory given directly as the name;
3. ``<hub_mirror>/owner/name`` when ``hub_mirror`` is set and that folder exists
   (air-gapped hosts: copy the hub repos there with the same layout);
4. the Hugging Face hub, through ``huggingface_hub`` into ``<cache_dir>/hub``:
   cached, resumable (files are written as ``.incomplete`` and renamed when whole),
   with tqdm progress; ``HF_HUB_OFFLINE=1`` and ``HF_ENDPOINT`` are honoured.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from tqdm.auto import tqdm

from pipeline.core.errors import DataUnavailableError
from pipeline.settings.model import Settings

BUNDLED_PREFIX = "bundled:"
BUNDLED_DIR = Path(__file__).parents[1] / "data"

#: Weights and tokenizer files of a sentence-transformers model; skips ONNX/OpenVINO copies.
TOKENIZER_FILE_PATTERNS = ["tokenizer*", "special_tokens_map.json", "*.model", "config.json"]
MODEL_FILE_PATTERNS = [
    "*.json",
    "*.txt",
    "*.model",
    "model.safetensors",
    "1_Pooling/*",
    "sentencepiece*",
]

DOWNLOAD_HINT_EN = (
    "run `python -m pipeline.download` on a machine that can reach huggingface.co, "
    "or set RAG_HUB_MIRROR to a directory laid out like the hub repos"
)
DOWNLOAD_HINT_JA = (
    "インターネットに接続できる環境で `python -m pipeline.download` を実行するか、"
    "ハブと同じ構成のディレクトリを RAG_HUB_MIRROR に指定してください。"
)


def local_repo_dir(repo: str, settings: Settings) -> Path | None:
    """The local folder that stands for ``repo``, or None when it must come from the hub."""
    if repo.startswith(BUNDLED_PREFIX):
        folder = BUNDLED_DIR / repo.removeprefix(BUNDLED_PREFIX)
        if not folder.is_dir():
            raise DataUnavailableError(
                en=f"bundled dataset {repo!r} does not exist in {BUNDLED_DIR}",
                ja=f"同梱データ {repo!r} が見つかりません（{BUNDLED_DIR}）。",
            )
        return folder
    direct = Path(repo).expanduser()
    if direct.is_dir():
        return direct
    if settings.hub_mirror is not None:
        mirrored = settings.hub_mirror.expanduser() / repo
        if mirrored.is_dir():
            return mirrored
    return None


def hub_cache_dir(settings: Settings) -> Path:
    return settings.resolved_cache_dir / "hub"


def fetch_file(
    repo: str,
    filename: str,
    settings: Settings,
    *,
    repo_type: str = "dataset",
    tqdm_class: type[tqdm] | None = None,
) -> Path:
    """The local path of one file of a repo, downloading it from the hub if needed."""
    folder = local_repo_dir(repo, settings)
    if folder is not None:
        path = folder / filename
        if not path.is_file():
            raise DataUnavailableError(
                en=f"{filename} is missing from {folder}",
                ja=f"{folder} に {filename} がありません。",
            )
        return path
    try:
        return Path(
            hf_hub_download(
                repo,
                filename,
                repo_type=repo_type,
                cache_dir=hub_cache_dir(settings),
                tqdm_class=tqdm_class,
            )
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise _unavailable(f"{repo}/{filename}", exc) from exc


def fetch_model(
    repo: str,
    settings: Settings,
    *,
    allow_download: bool,
    patterns: list[str] | None = None,
    repo_type: str = "model",
    tqdm_class: type[tqdm] | None = None,
) -> Path:
    """The local folder of a model or other repo (``patterns``: which files, default a
    model's weights and tokenizer); with ``allow_download=False`` only what is cached."""
    folder = local_repo_dir(repo, settings)
    if folder is not None:
        return folder
    try:
        return Path(
            snapshot_download(
                repo,
                repo_type=repo_type,
                cache_dir=hub_cache_dir(settings),
                allow_patterns=patterns or MODEL_FILE_PATTERNS,
                local_files_only=not allow_download,
                tqdm_class=tqdm_class,
            )
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise _unavailable(repo, exc) from exc


def _unavailable(what: str, exc: Exception) -> DataUnavailableError:
    return DataUnavailableError(
        en=f"cannot get {what} from the hub and it is not cached ({type(exc).__name__}): {DOWNLOAD_HINT_EN}",
        ja=f"{what} をハブから取得できず、キャッシュにもありません。{DOWNLOAD_HINT_JA}",
    )
