"""The one settings object of the product, and where its values come from.

Values are layered, later wins: field defaults < the profile's preset (``demo`` or
``jawiki``) < the TOML settings file < the secrets file (``.streamlit/secrets.toml``:
``[llm] api_key``, ``base_url`` and ``[api] token`` only) < ``RAG_*`` environment variables. Every value is
validated here and nowhere else; an invalid one raises :class:`SettingsError` whose
message names the field, the value and the allowed range (Japanese for the UI,
English for logs).

Environment variables follow one rule: ``RAG_<FIELD>`` for top-level fields and
``RAG_<SECTION>_<FIELD>`` for the others, e.g. ``RAG_PROFILE``, ``RAG_CACHE_DIR``,
``RAG_RETRIEVAL_TOP_K``, ``RAG_LLM_BASE_URL``. ``RAG_SETTINGS_FILE`` names the TOML file.
"""

from __future__ import annotations

import copy
import os
import re
import time
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types
import tomli_w
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from pipeline.errors import FieldProblem, SettingsError
from pipeline.prompts import (
    CONDENSE_PLACEHOLDERS,
    DEFAULT_CONDENSE_TEMPLATE,
    DEFAULT_QA_TEMPLATE,
    DEFAULT_SYSTEM_PROMPT,
    QA_PLACEHOLDERS,
)

ENV_PREFIX = "RAG_"
SETTINGS_FILE_ENV = "RAG_SETTINGS_FILE"
SECRETS_FILE_ENV = "RAG_SECRETS_FILE"
DEFAULT_SECRETS_FILE = Path(".streamlit/secrets.toml")
#: What may come from the secrets file (Streamlit's, git-ignored): credentials only.
SECRET_FIELDS = {"llm": ("api_key", "base_url"), "api": ("token",)}
#: Never written to the settings file.
SECRET_PATHS = (("llm", "api_key"), ("api", "token"))
DEFAULT_SETTINGS_FILE = Path("~/.config/jawiki-rag/settings.toml")
DEFAULT_CACHE_DIR = Path("~/.cache/jawiki-rag")

Profile = Literal["demo", "jawiki"]
RetrieverMode = Literal["bm25", "dense", "hybrid"]
ModeSetting = Literal["auto", "bm25", "dense", "hybrid"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CorpusSettings(_Section):
    repo: str = Field(
        "singletongue/wikipedia-utils",
        title="コーパス",
        description="Hugging Face のデータセット ID、ハブと同じ構成のローカルディレクトリ、"
        "または同梱デモの 'bundled:<名前>'。",
    )
    config: str = Field("passages-c400-jawiki-20230403", title="コーパスの構成名")
    split: str = Field("train", title="コーパスの分割")


class IndexSettings(_Section):
    repo: str = Field(
        "hotchpotch/wikipedia-passages-jawiki-embeddings",
        title="ベクトル索引のリポジトリ",
        description="空にすると、埋め込みモデルでコーパスから索引をローカルに作ります。",
    )
    file: str = Field(
        "faiss_indexes/passages-c400-jawiki-20230403/multilingual-e5-large-passage/index_IVF2048_PQ256.faiss",
        title="ベクトル索引のファイル",
    )
    nprobe: int = Field(128, ge=1, le=65536, title="nprobe", description="IVF 索引で調べるクラスタ数。")
    backend: Literal["faiss-cpu", "faiss-gpu", "exact"] = Field(
        "faiss-cpu",
        title="ベクトル検索の方式",
        description="faiss-cpu: FAISS 索引を CPU で（シードと同じ）。"
        "faiss-gpu: 同じ索引を GPU で（faiss-gpu が必要、約 1.5 GB）。"
        "exact: 全パッセージのベクトルを GPU に載せて全件探索（5.5M 件で約 11.4 GB、近似なし）。"
        "使えないときは faiss-cpu に戻します。",
    )
    embeddings_dir: str = Field(
        "embs/passages-c400-jawiki-20230403/multilingual-e5-large-passage",
        title="パッセージ埋め込みのフォルダ",
        description="exact で使う生の埋め込み（.npz）の、索引リポジトリ内の場所。",
    )


class EmbeddingSettings(_Section):
    model: str = Field(
        "intfloat/multilingual-e5-large",
        title="埋め込みモデル",
        description="Hugging Face のモデル ID、またはローカルディレクトリ。",
    )
    query_prefix: str = Field("query: ", title="質問の接頭辞")
    passage_prefix: str = Field("passage: ", title="パッセージの接頭辞")
    max_length: int = Field(512, ge=8, le=8192, title="最大トークン数")
    query_encoder: Literal["auto", "sentence-transformers", "padded", "compiled"] = Field(
        "auto",
        title="質問の埋め込み方式",
        description="auto: GPU では compiled（fp16・CUDA グラフ、起動時に数十秒の準備）、"
        "CPU では sentence-transformers。",
    )
    allow_fallback: bool = Field(
        True,
        title="代替モデルの使用",
        description="指定モデルを読み込めないとき、同梱の all-MiniLM-L6-v2 で密ベクトル検索を"
        "続けます（英語向けのモデルなので日本語の精度は低めです）。",
    )


class RetrievalSettings(_Section):
    mode: ModeSetting = Field(
        "auto",
        title="検索方式",
        description="auto: 設定した埋め込みモデルと BM25 が両方使えれば hybrid、"
        "埋め込みモデルが代替モデル（MiniLM）なら bm25、BM25 がなければ dense。",
    )
    top_k: int = Field(5, ge=1, le=100, title="検索件数")
    hybrid_candidates: int = Field(
        50,
        ge=1,
        le=1000,
        title="ハイブリッドの候補数",
        description="BM25 と密ベクトル検索それぞれから融合前に取り出す件数。",
    )
    rrf_k: int = Field(60, ge=1, le=1000, title="RRF の k")
    max_query_chars: int = Field(
        2000,
        ge=10,
        le=100000,
        title="質問の最大文字数",
        description="これより長い質問は先頭だけを使い、その旨を表示します。",
    )
    bm25_auto_build_limit: int = Field(
        1_000_000,
        ge=0,
        title="BM25 を自動で作る上限",
        description="この件数以下のコーパスでは BM25 索引を起動時に作ります。"
        "より大きいコーパスでは `python -m pipeline.download --bm25` で作った索引だけを使います。",
    )


class RerankSettings(_Section):
    enabled: bool = Field(
        False,
        title="リランキング",
        description="検索した候補を日本語のクロスエンコーダで並べ替えます（モデルの読み込みが必要）。",
    )
    model: str = Field("hotchpotch/japanese-reranker-cross-encoder-small-v1", title="リランキングのモデル")
    candidates: int = Field(50, ge=1, le=1000, title="リランキングする候補数")


class LLMSettings(_Section):
    backend: Literal["auto", "local", "remote", "none"] = Field(
        "auto",
        title="LLM バックエンド",
        description="auto: URL が設定されていれば remote、GPU と vLLM があれば local、"
        "どちらもなければ none（検索のみ）。",
    )
    model: str = Field("elyza/ELYZA-japanese-Llama-2-13b-instruct", title="LLM モデル")
    base_url: str = Field("", title="OpenAI 互換 API の URL（/v1 で終わる）")

    @field_validator("base_url")
    @classmethod
    def _openai_base_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?/v1", value):
            raise PydanticCustomError("invalid_base_url", "not an OpenAI-compatible base URL")
        return value

    api_key: SecretStr = Field(SecretStr(""), title="API キー")
    dtype: Literal["bfloat16", "float16", "auto"] = Field("bfloat16", title="dtype")
    gpu_memory_utilization: float = Field(
        0.85,
        gt=0.0,
        le=0.99,
        title="GPU メモリ使用率",
        description="vLLM が GPU 全体のうち確保する割合（重み・KV キャッシュ込み）。",
    )
    tensor_parallel_size: int = Field(1, ge=1, le=64, title="テンソル並列数")
    max_model_len: int = Field(4096, ge=256, le=131072, title="最大コンテキスト長")
    timeout_s: float = Field(
        60.0,
        gt=0.0,
        le=3600.0,
        title="LLM タイムアウト（秒）",
        description="接続と、生成中にトークンが届かない時間の上限。",
    )
    serve_command: str = Field(
        "vllm serve",
        title="vLLM の起動コマンド",
        description="local バックエンドで起動するコマンド。モデル名とオプションが後ろに付きます。",
    )
    port: int = Field(0, ge=0, le=65535, title="vLLM のポート", description="0 なら空いているポートを使います。")
    startup_timeout_s: float = Field(1800.0, gt=0.0, le=7200.0, title="vLLM 起動の待ち時間（秒）")


class ApiSettings(_Section):
    host: str = Field(
        "127.0.0.1", title="API の待ち受けアドレス", description="他のマシンから使うときだけ 0.0.0.0 などに。"
    )
    port: int = Field(8000, ge=1, le=65535, title="API のポート")
    token: SecretStr = Field(
        SecretStr(""), title="API トークン", description="設定すると Authorization: Bearer <token> が必須になります。"
    )
    max_concurrent_generations: int = Field(
        8, ge=1, le=1024, title="同時生成数の上限", description="超えた要求には 429 と Retry-After を返します。"
    )
    retry_after_s: int = Field(2, ge=1, le=3600, title="Retry-After（秒）")
    max_body_bytes: int = Field(262_144, ge=1024, le=64 * 2**20, title="リクエスト本文の上限（バイト）")
    cors_origins: str = Field("", title="CORS を許可するオリジン（カンマ区切り、既定は無し）")
    url: str = Field(
        "",
        title="RAG API の URL（UI を API クライアントにする）",
        description="設定すると、UI は検索と生成をこの API に任せます（例: http://127.0.0.1:8000）。",
    )


class GenerationSettings(_Section):
    max_new_tokens: int = Field(1024, ge=1, le=8192, title="最大生成トークン数")
    do_sample: bool = Field(False, title="サンプリング")
    temperature: float = Field(0.7, ge=0.0, le=2.0, title="temperature")
    top_p: float = Field(0.95, gt=0.0, le=1.0, title="top_p")
    top_k: int = Field(50, ge=0, le=1000, title="top_k（サンプリング）")
    repetition_penalty: float = Field(1.2, ge=1.0, le=2.0, title="repetition_penalty")
    history_tokens: int = Field(
        1024,
        ge=0,
        le=32768,
        title="会話履歴のトークン数",
        description="プロンプトに含める過去のやりとりの上限（新しいものから）。",
    )


class PromptSettings(_Section):
    system: str = Field(DEFAULT_SYSTEM_PROMPT, min_length=1, title="システムプロンプト")
    qa: str = Field(
        DEFAULT_QA_TEMPLATE, title="質問応答の指示", description="{context} と {question} を含めてください。"
    )
    condense: str = Field(
        DEFAULT_CONDENSE_TEMPLATE,
        title="質問書き換えの指示",
        description="{history} と {question} を含めてください。",
    )

    @field_validator("qa")
    @classmethod
    def _qa_placeholders(cls, value: str) -> str:
        return _require_placeholders(value, QA_PLACEHOLDERS)

    @field_validator("condense")
    @classmethod
    def _condense_placeholders(cls, value: str) -> str:
        return _require_placeholders(value, CONDENSE_PLACEHOLDERS)


#: Messages of the validators' own error types: (English, Japanese) templates.
CUSTOM_MESSAGES = {
    "missing_placeholder": ("{path} must contain {missing}", "「{label}」({path}) には {missing} を含めてください。"),
    "invalid_base_url": (
        "{path}={value!r} is invalid: expected an http(s) URL ending in /v1",
        "「{label}」({path}) の値 {value!r} は無効です。http:// または https:// で始まり /v1 で終わる URL"
        "（例: http://127.0.0.1:8000/v1）を指定してください。",
    ),
}


def _require_placeholders(value: str, placeholders: tuple[str, ...]) -> str:
    missing = [p for p in placeholders if p not in value]
    if missing:
        raise PydanticCustomError(
            "missing_placeholder", "the template lacks {missing}", {"missing": ", ".join(missing)}
        )
    return value


class Settings(_Section):
    """Everything the pipeline needs to know, validated once."""

    profile: Profile = Field("demo", title="データプロファイル")
    cache_dir: Path = Field(DEFAULT_CACHE_DIR, title="キャッシュディレクトリ")
    hub_mirror: Path | None = Field(
        None,
        title="ハブのミラー",
        description="'<owner>/<name>/...' の形でリポジトリを置いたローカルディレクトリ（オフライン環境用）。",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", title="デバイス")
    corpus: CorpusSettings = CorpusSettings()
    index: IndexSettings = IndexSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    rerank: RerankSettings = RerankSettings()
    llm: LLMSettings = LLMSettings()
    generation: GenerationSettings = GenerationSettings()
    prompts: PromptSettings = PromptSettings()
    api: ApiSettings = ApiSettings()

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir.expanduser()


#: What each browser session may change for itself (the rest is server-wide: it decides
#: which corpus, index and models the process loads, or which engine it runs).
SESSION_SECTIONS = frozenset({"generation", "prompts"})
SESSION_FIELDS = frozenset({
    "retrieval.mode", "retrieval.top_k", "retrieval.hybrid_candidates", "retrieval.rrf_k", "index.nprobe",
})  # fmt: skip


def is_session_field(path: str) -> bool:
    return path in SESSION_FIELDS or path.split(".", 1)[0] in SESSION_SECTIONS


#: What each profile changes from the field defaults (the jawiki profile is the defaults).
PROFILE_PRESETS: dict[str, dict[str, Any]] = {
    "jawiki": {},
    "demo": {
        "corpus": {"repo": "bundled:jsquad-valid-v1.3", "config": "default"},
        "index": {"repo": "", "file": ""},
    },
}


def load_settings(
    path: Path | str | None = None,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Build the settings from the TOML file, the environment and explicit overrides.

    ``path`` defaults to ``$RAG_SETTINGS_FILE`` or ``~/.config/jawiki-rag/settings.toml``;
    a missing file is not an error. ``overrides`` (nested dicts) win over everything,
    for CLI flags.
    """
    environ = os.environ if environ is None else environ
    file_values = read_settings_file(settings_file_path(path, environ))
    secrets_path = Path(environ.get(SECRETS_FILE_ENV) or DEFAULT_SECRETS_FILE).expanduser()
    layered = _deep_merge(file_values, secret_values(read_settings_file(secrets_path)))
    layered = _deep_merge(layered, env_values(environ))
    layered = _deep_merge(layered, overrides or {})
    return settings_from_values(layered)


def settings_file_path(path: Path | str | None = None, environ: dict[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    chosen = path or environ.get(SETTINGS_FILE_ENV) or DEFAULT_SETTINGS_FILE
    return Path(chosen).expanduser()


def read_settings_file(path: Path) -> dict[str, Any]:
    """The raw values of a TOML settings file; {} when it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(
            [
                FieldProblem(
                    "settings_file",
                    str(path),
                    en=f"cannot read settings file {path}: {exc}",
                    ja=f"設定ファイル {path} を読めません（{exc}）。",
                )
            ]
        ) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(
            [
                FieldProblem(
                    "settings_file",
                    str(path),
                    en=f"settings file {path} is not valid TOML: {exc}",
                    ja=f"設定ファイル {path} は TOML として正しくありません（{exc}）。",
                )
            ]
        ) from exc


def secret_values(secrets: dict[str, Any]) -> dict[str, Any]:
    """The credentials in a secrets file; anything else there belongs to someone else."""
    values: dict[str, Any] = {}
    for section, names in SECRET_FIELDS.items():
        table = secrets.get(section)
        if isinstance(table, dict):
            picked = {name: table[name] for name in names if name in table}
            if picked:
                values[section] = picked
    return values


def env_values(environ: dict[str, str]) -> dict[str, Any]:
    """Nested raw values from ``RAG_*`` variables, following the naming rule above."""
    values: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        section = _section_model(field)
        if section is None:
            env_name = f"{ENV_PREFIX}{name.upper()}"
            if env_name in environ:
                values[name] = environ[env_name]
            continue
        for sub in section.model_fields:
            env_name = f"{ENV_PREFIX}{name.upper()}_{sub.upper()}"
            if env_name in environ:
                values.setdefault(name, {})[sub] = environ[env_name]
    return values


def settings_from_values(values: dict[str, Any]) -> Settings:
    """Validate raw nested values on top of their profile's preset."""
    profile = values.get("profile", Settings.model_fields["profile"].default)
    preset = PROFILE_PRESETS.get(profile, {}) if isinstance(profile, str) else {}
    merged = _deep_merge(preset, values)
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise SettingsError([_describe(error) for error in exc.errors()]) from None


def changed_values(settings: Settings, *, secrets: bool = False) -> dict[str, Any]:
    """The values that differ from the profile's own defaults (what a settings file
    needs to hold); secrets (API key, API token) only when ``secrets`` is true."""
    current = settings.model_dump(mode="json")
    defaults = settings_from_values({"profile": settings.profile}).model_dump(mode="json")
    changed: dict[str, Any] = {"profile": settings.profile}
    for key, value in current.items():
        if isinstance(value, dict):
            diff = {k: v for k, v in value.items() if defaults[key].get(k) != v}
            if diff:
                changed[key] = diff
        elif value != defaults[key] and value is not None:
            changed[key] = value
    for section, name in SECRET_PATHS:
        changed.get(section, {}).pop(name, None)
        value = getattr(getattr(settings, section), name).get_secret_value()
        if secrets and value:
            changed.setdefault(section, {})[name] = value
    return {key: value for key, value in changed.items() if value != {}}


def with_values(settings: Settings, values: dict[str, Any]) -> Settings:
    """These settings with some dotted-path values replaced, validated. A new profile
    brings its own preset under the values that were customised."""
    raw = changed_values(settings, secrets=True)
    for path, value in values.items():
        section, _, name = path.rpartition(".")
        (raw.setdefault(section, {}) if section else raw)[name] = value
    return settings_from_values(raw)


def save_settings(settings: Settings, path: Path | str | None = None) -> Path | None:
    """Write what differs from the profile's defaults (never the API key) to the TOML
    file. A file that cannot be read is kept as ``<name>.bad-<time>`` first, never
    overwritten silently; that backup's path is returned."""
    target = settings_file_path(path)
    backup = None
    try:
        read_settings_file(target)
    except SettingsError:
        backup = target.with_name(f"{target.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
        target.replace(backup)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp")
    staging.write_text(tomli_w.dumps(changed_values(settings)), encoding="utf-8")
    staging.replace(target)
    return backup


def env_overridden(environ: dict[str, str] | None = None) -> set[str]:
    """Dotted paths of the fields set by ``RAG_*`` variables (they win over the file)."""
    paths = set()
    for key, value in env_values(os.environ if environ is None else environ).items():
        if isinstance(value, dict):
            paths.update(f"{key}.{name}" for name in value)
        else:
            paths.add(key)
    return paths


def field_info(path: str) -> FieldInfo:
    """The pydantic field for a dotted path such as ``retrieval.top_k``."""
    model: type[BaseModel] = Settings
    parts = path.split(".")
    for part in parts[:-1]:
        section = _section_model(model.model_fields[part])
        if section is None:
            raise KeyError(path)
        model = section
    return model.model_fields[parts[-1]]


def allowed_values(info: FieldInfo) -> tuple[str, str]:
    """What a field accepts, as (English, Japanese) text for messages and help."""
    annotation = info.annotation
    if get_origin(annotation) is Literal:
        choices = ", ".join(repr(c) for c in get_args(annotation))
        return f"one of {choices}", f"{choices} のいずれか"
    bounds_en, bounds_ja = [], []
    for meta in info.metadata:
        for attr, en, ja in (
            ("ge", ">= {}", "{} 以上"),
            ("gt", "> {}", "{} 超"),
            ("le", "<= {}", "{} 以下"),
            ("lt", "< {}", "{} 未満"),
        ):
            if isinstance(meta, getattr(annotated_types, attr.capitalize())):
                bound = getattr(meta, attr)
                bounds_en.append(en.format(bound))
                bounds_ja.append(ja.format(bound))
    kind_en, kind_ja = {
        int: ("an integer", "整数"),
        float: ("a number", "数値"),
        bool: ("true or false", "true または false"),
    }.get(annotation, ("a string", "文字列"))
    if bounds_en:
        return f"{kind_en} {' and '.join(bounds_en)}", f"{' '.join(bounds_ja)}の{kind_ja}"
    return kind_en, kind_ja


def _describe(error: dict[str, Any]) -> FieldProblem:
    path = ".".join(str(p) for p in error["loc"])
    value = error.get("input")
    try:
        info = field_info(path)
    except KeyError:
        return FieldProblem(
            path,
            value,
            en=f"{path}: unknown setting",
            ja=f"{path}: 不明な設定項目です。",
        )
    label = info.title or path
    if error["type"] in CUSTOM_MESSAGES:
        en, ja = CUSTOM_MESSAGES[error["type"]]
        context = {"path": path, "label": label, "value": value, **error.get("ctx", {})}
        return FieldProblem(path, value, en=en.format(**context), ja=ja.format(**context))
    allowed_en, allowed_ja = allowed_values(info)
    return FieldProblem(
        path,
        value,
        en=f"{path}={value!r} is invalid: expected {allowed_en}",
        ja=f"「{label}」({path}) の値 {value!r} は無効です。{allowed_ja} を指定してください。",
    )


def _section_model(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, _Section):
        return annotation
    return None


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
