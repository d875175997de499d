"""The one settings object of the product: its schema, defaults and validation.

Every value is validated here and nowhere else. Where the values come from (defaults,
profile presets, the TOML file, secrets, ``RAG_*`` variables) is
:mod:`pipeline.settings.sources`; how an invalid value is explained, in Japanese
and English, is :mod:`pipeline.settings.messages`.

Fields a browser session (or one API request) may change for itself are marked
``scope="session"`` here, once; everything else is server-wide, because it decides which
corpus, index, models and engine the process loads. Of those, the fields marked
``scope="operator"`` (alone or by their whole section) are the operator's alone: they
decide what code runs on the host, where users' questions and history go, and who is
trusted, so only the environment, the settings file or the command line set them, never
the settings page (docs/security.md).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipeline.core.schema import PromptFormatName, RetrieverName
from pipeline.core.unicode import well_formed
from pipeline.settings.default_prompts import (
    CONDENSE_PLACEHOLDERS,
    DEFAULT_CONDENSE_TEMPLATE,
    DEFAULT_QA_TEMPLATE,
    DEFAULT_SYSTEM_PROMPT,
    QA_PLACEHOLDERS,
)

DEFAULT_CACHE_DIR = Path("~/.cache/jawiki-rag")

#: demo: the bundled corpus; jawiki: the hub's 2023-04 corpus and index; custom: a corpus
#: built with ``python -m pipeline.build`` (``corpus.build`` names it).
Profile = Literal["demo", "jawiki", "custom"]
#: What a user may ask for (``auto`` lets the service choose).
RetrieverChoice = Literal["auto", "bm25", "dense", "hybrid"]
RETRIEVER_NAMES: tuple[RetrieverName, ...] = get_args(RetrieverName)
SearchBackend = Literal["faiss-cpu", "faiss-gpu", "exact", "exact-int8"]
LLMBackendChoice = Literal["auto", "local", "remote", "none"]
PromptFormatChoice = Literal["auto", PromptFormatName]

#: Marks a field that one session or request may set for itself.
SESSION = {"scope": "session"}
#: Marks a field (or a whole section) only the operator sets: environment, settings file,
#: command line; an admin on the settings page sees it but cannot change it.
OPERATOR = {"scope": "operator"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _well_formed(cls, value: Any) -> Any:
        """Text that can be written to a file or sent to a model (lone surrogates replaced)."""
        return well_formed(value) if isinstance(value, str) else value


class CorpusSettings(_Section):
    repo: str = Field(
        "singletongue/wikipedia-utils",
        title="コーパス",
        description="Hugging Face のデータセット ID、ハブと同じ構成のローカルディレクトリ、"
        "または同梱デモの 'bundled:<名前>'。",
    )
    config: str = Field("passages-c400-jawiki-20230403", title="コーパスの構成名")
    split: str = Field("train", title="コーパスの分割")
    build: str = Field(
        "",
        title="ビルドしたコーパス",
        description="custom プロファイルで使う、`python -m pipeline.build` の出力フォルダ"
        "（複数あれば最新のダンプ）、またはその manifest.json。",
    )


class IndexSettings(_Section):
    repo: str = Field(
        "hotchpotch/wikipedia-passages-jawiki-embeddings",
        title="ベクトル索引のリポジトリ",
        description="空にすると、埋め込みモデルでコーパスから索引をローカルに作ります。",
        json_schema_extra=OPERATOR,
    )
    file: str = Field(
        "faiss_indexes/passages-c400-jawiki-20230403/multilingual-e5-large-passage/index_IVF2048_PQ256.faiss",
        title="ベクトル索引のファイル",
        json_schema_extra=OPERATOR,
    )
    nprobe: int = Field(
        128, ge=1, le=65536, title="nprobe", description="IVF 索引で調べるクラスタ数。", json_schema_extra=SESSION
    )
    backend: SearchBackend = Field(
        "faiss-cpu",
        title="ベクトル検索の方式",
        description="faiss-cpu: FAISS 索引を CPU で（シードと同じ）。"
        "faiss-gpu: 同じ索引を GPU で（faiss-gpu が必要、約 1.4 GiB）。"
        "exact: 全パッセージのベクトルを GPU に載せて全件探索（5.5M 件で約 10.6 GiB、近似なし）。"
        "exact-int8: 同じ全件探索を int8 で行い、上位候補を元のベクトルで採点し直します"
        "（GPU 約 5.3 GiB、読み出し量が半分）。"
        "使えないときは faiss-cpu に戻します。",
    )
    scan_graphs: bool = Field(
        True,
        title="int8 探索の CUDA グラフ",
        description="exact-int8 の探索（質問の量子化・int8 の行列積・上位候補の選択）を起動時に"
        "CUDA グラフとして記録し、検索ごとに 1 回の起動で実行します（GPU のみ、約 1.3 GiB を常に確保）。"
        "CPU では使わず、記録できないときは通常の実行に戻ります。",
    )
    encode_and_scan: bool = Field(
        True,
        title="質問の符号化と探索を 1 ステップで",
        description="exact-int8 を GPU で使うとき、待っている質問をまとめて E5 で符号化し、"
        "そのまま同じスレッドで int8 探索まで行います（スレッド間の受け渡しが 1 回になります）。"
        "質問の符号化が CUDA グラフ（captured / compiled）のときだけ働きます。"
        "オフにすると、符号化と探索を別々のスレッドでまとめて行います。",
    )
    embeddings_dir: str = Field(
        "embs/passages-c400-jawiki-20230403/multilingual-e5-large-passage",
        title="パッセージ埋め込みのフォルダ",
        description="exact と exact-int8 で使う生の埋め込み（.npz）の、索引リポジトリ内の場所。",
        json_schema_extra=OPERATOR,
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
    query_encoder: Literal["auto", "sentence-transformers", "padded", "compiled", "captured"] = Field(
        "auto",
        title="質問の埋め込み方式",
        description="auto: GPU では captured（fp16・CUDA グラフを起動時に記録）、"
        "CPU では sentence-transformers。compiled は CUDA グラフを torch.compile で作ります"
        "（起動時に数十秒の準備）。captured は GPU のみで、CPU では padded と同じです。",
    )
    allow_fallback: bool = Field(
        True,
        title="代替モデルの使用",
        description="指定モデルを読み込めないとき、同梱の all-MiniLM-L6-v2 で密ベクトル検索を"
        "続けます（英語向けのモデルなので日本語の精度は低めです）。",
    )


class RetrievalSettings(_Section):
    mode: RetrieverChoice = Field(
        "auto",
        title="検索方式",
        description="auto: 設定した埋め込みモデルと BM25 が両方使えれば hybrid、"
        "埋め込みモデルが代替モデル（MiniLM）なら bm25、BM25 がなければ dense。",
        json_schema_extra=SESSION,
    )
    top_k: int = Field(5, ge=1, le=100, title="検索件数", json_schema_extra=SESSION)
    hybrid_candidates: int = Field(
        50,
        ge=1,
        le=1000,
        title="ハイブリッドの候補数",
        description="BM25 と密ベクトル検索それぞれから融合前に取り出す件数。",
        json_schema_extra=SESSION,
    )
    rrf_k: int = Field(60, ge=1, le=1000, title="RRF の k", json_schema_extra=SESSION)
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
    model: str = Field(
        "hotchpotch/japanese-reranker-cross-encoder-small-v1", title="リランキングのモデル", json_schema_extra=OPERATOR
    )
    candidates: int = Field(50, ge=1, le=1000, title="リランキングする候補数")


class LLMSettings(_Section):
    backend: LLMBackendChoice = Field(
        "auto",
        title="LLM バックエンド",
        description="auto: URL が設定されていれば remote、GPU と vLLM があれば local、"
        "どちらもなければ none（検索のみ）。",
    )
    model: str = Field(
        "elyza/ELYZA-japanese-Llama-2-13b-instruct",
        title="LLM モデル",
        description="管理者は、運用者が許可したモデル（llm.allowed_models）の中から選べます。",
    )
    allowed_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        title="管理者が選べる LLM モデル",
        description="設定ページで選べるモデル（既定のモデルと、起動時に設定されたモデルは常に選べます）。"
        "環境変数ではカンマ区切り（RAG_LLM_ALLOWED_MODELS）。",
        json_schema_extra=OPERATOR,
    )
    prompt_format: PromptFormatChoice = Field(
        "auto",
        title="プロンプト形式",
        description="llama2: ELYZA（Llama-2）のプロンプトを組み立てて /v1/completions に送ります。"
        "chat-template: モデル自身のチャットテンプレートで /v1/chat/completions に送ります（Llama-3・Qwen 系など）。"
        "auto: モデル名に Llama-2 を含めば llama2、それ以外は chat-template。",
    )
    base_url: str = Field("", title="OpenAI 互換 API の URL（/v1 で終わる）", json_schema_extra=OPERATOR)

    @field_validator("allowed_models", mode="before")
    @classmethod
    def _model_list(cls, value: Any) -> Any:
        return _comma_separated(value)

    @field_validator("base_url")
    @classmethod
    def _openai_base_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?/v1", value):
            raise PydanticCustomError("invalid_base_url", "not an OpenAI-compatible base URL")
        return value

    api_key: SecretStr = Field(SecretStr(""), title="API キー", json_schema_extra=OPERATOR)
    dtype: Literal["bfloat16", "float16", "auto"] = Field("bfloat16", title="dtype")
    gpu_memory_utilization: Annotated[float, Field(gt=0.0, le=0.99)] | Literal["auto"] = Field(
        "auto",
        title="GPU メモリ使用率",
        description="vLLM が GPU 全体のうち確保する割合（重み・KV キャッシュ込み）。"
        "auto: 起動時の空きメモリから、質問の埋め込みモデルとベクトル検索の分を残して決めます。",
    )
    quantization: Literal["none", "fp8"] = Field(
        "none",
        title="重みの量子化",
        description="fp8: Hopper 以降の GPU で重みを FP8 にします（vLLM の --quantization fp8）。",
    )
    kv_cache_dtype: Literal["auto", "fp8"] = Field(
        "auto",
        title="KV キャッシュの型",
        description="fp8: KV キャッシュを FP8 にして、同時に扱えるトークン数を増やします（--kv-cache-dtype fp8）。",
    )
    extra_args: str = Field(
        "",
        title="vLLM の追加オプション",
        description="local バックエンドで vllm serve に追加で渡すオプション"
        "（例: --load-format dummy --enforce-eager）。運用者だけが設定できます。",
        json_schema_extra=OPERATOR,
    )

    @field_validator("extra_args")
    @classmethod
    def _command_line(cls, value: str) -> str:
        try:
            shlex.split(value)
        except ValueError:  # an unclosed quote: vllm serve could not be started with it
            raise PydanticCustomError("invalid_command_line", "does not split as a command line") from None
        return value

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
        json_schema_extra=OPERATOR,
    )
    port: int = Field(
        0,
        ge=0,
        le=65535,
        title="vLLM のポート",
        description="0 なら空いているポートを使います。",
        json_schema_extra=OPERATOR,
    )
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
    allow_prompt_override: bool = Field(
        False,
        title="リクエストごとのプロンプト変更",
        description="true にすると、API の利用者が rag_settings の prompts.* でシステムプロンプトや指示を"
        "リクエストごとに変えられます（既定は拒否）。",
    )
    admin_token: SecretStr = Field(
        SecretStr(""),
        title="API の管理トークン",
        description="設定すると、このトークン（Authorization: Bearer）で /admin/ の管理操作（設定の保存、"
        "再読み込み、エンジンの再起動、ダウンロード）が使えます。未設定なら管理操作は無効です。",
    )
    admin_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        title="管理する API レプリカの URL",
        description="UI を API クライアントにしたとき、設定ページから管理する各レプリカの URL（カンマ区切り）。"
        "空なら api.url だけ。",
    )
    cors_origins: str = Field("", title="CORS を許可するオリジン（カンマ区切り、既定は無し）")
    url: str = Field(
        "",
        title="RAG API の URL（UI を API クライアントにする）",
        description="設定すると、UI は検索と生成をこの API に任せます（例: http://127.0.0.1:8000）。",
    )

    @field_validator("admin_urls", mode="before")
    @classmethod
    def _url_list(cls, value: Any) -> Any:
        return _comma_separated(value)


class MetricsSettings(_Section):
    port: int = Field(
        0,
        ge=0,
        le=65535,
        title="メトリクスのポート",
        description="アプリ（streamlit run）が Prometheus 形式のメトリクスを出すポート（0 なら出さない）。"
        "RAG API は自分のポートの /metrics で出します。",
    )
    host: str = Field("127.0.0.1", title="メトリクスの待ち受けアドレス")


class DatabaseSettings(_Section):
    url: SecretStr = Field(
        SecretStr(""),
        title="会話履歴のデータベース",
        description="SQLAlchemy の URL（例: postgresql+psycopg://user:pass@host/db）。"
        "空なら キャッシュディレクトリの history.sqlite3（SQLite）。パスワードを含みうるため秘密として扱います。",
    )
    busy_timeout_s: float = Field(
        5.0,
        gt=0.0,
        le=120.0,
        title="データベースの待ち時間（秒）",
        description="別のプロセスが書き込み中のとき、この時間まで待ってから諦めます。",
    )


class AdminSettings(_Section):
    users: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        title="管理者",
        description="ログイン（OIDC）時に、サーバー全体の設定を変更できる利用者のメールアドレス（カンマ区切り）。",
    )
    password: SecretStr = Field(
        SecretStr(""),
        title="管理者パスワード",
        description="ログインなしで、この端末以外から（またはリバースプロキシ経由で）使う人が、"
        "サーバー全体の設定を変更するためのパスワード。",
    )
    local_operator: bool = Field(
        True,
        title="この端末の利用者を管理者とみなす",
        description="ログインなしでも、プロキシを経由せずにこの端末（127.0.0.1）から直接使う人を運用者（管理者）と"
        "みなします。転送ヘッダー（X-Forwarded-For など）を付けないプロキシの後ろでは false にしてください。",
    )

    @field_validator("users", mode="before")
    @classmethod
    def _users(cls, value: Any) -> Any:
        """``RAG_ADMIN_USERS=a@example.com,b@example.com`` as well as a TOML list."""
        return _comma_separated(value)


class GenerationSettings(_Section):
    max_new_tokens: int = Field(1024, ge=1, le=8192, title="最大生成トークン数", json_schema_extra=SESSION)
    do_sample: bool = Field(False, title="サンプリング", json_schema_extra=SESSION)
    temperature: float = Field(0.7, ge=0.0, le=2.0, title="temperature", json_schema_extra=SESSION)
    top_p: float = Field(0.95, gt=0.0, le=1.0, title="top_p", json_schema_extra=SESSION)
    top_k: int = Field(50, ge=0, le=1000, title="top_k（サンプリング）", json_schema_extra=SESSION)
    repetition_penalty: float = Field(1.2, ge=1.0, le=2.0, title="repetition_penalty", json_schema_extra=SESSION)
    history_tokens: int = Field(
        1024,
        ge=0,
        le=32768,
        title="会話履歴のトークン数",
        description="プロンプトに含める過去のやりとりの上限（新しいものから）。",
        json_schema_extra=SESSION,
    )

    def sampling(self) -> dict[str, float | int]:
        """The effective sampling values: greedy (temperature 0, top_p 1, top_k -1) unless
        ``do_sample``; vLLM reads top_k -1 as 'off'."""
        if not self.do_sample:
            return {"temperature": 0.0, "top_p": 1.0, "top_k": -1}
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k if self.top_k > 0 else -1}


class PromptSettings(_Section):
    system: str = Field(DEFAULT_SYSTEM_PROMPT, min_length=1, title="システムプロンプト", json_schema_extra=SESSION)
    qa: str = Field(
        DEFAULT_QA_TEMPLATE,
        title="質問応答の指示",
        description="{context} と {question} を含めてください。",
        json_schema_extra=SESSION,
    )
    condense: str = Field(
        DEFAULT_CONDENSE_TEMPLATE,
        title="質問書き換えの指示",
        description="{history} と {question} を含めてください。",
        json_schema_extra=SESSION,
    )

    @field_validator("qa")
    @classmethod
    def _qa_placeholders(cls, value: str) -> str:
        return _require_placeholders(value, QA_PLACEHOLDERS)

    @field_validator("condense")
    @classmethod
    def _condense_placeholders(cls, value: str) -> str:
        return _require_placeholders(value, CONDENSE_PLACEHOLDERS)


def _comma_separated(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _require_placeholders(value: str, placeholders: tuple[str, ...]) -> str:
    missing = [p for p in placeholders if p not in value]
    if missing:
        raise PydanticCustomError(
            "missing_placeholder", "the template lacks {missing}", {"missing": ", ".join(missing)}
        )
    return value


class Settings(BaseSettings, _Section):
    """Everything the pipeline needs to know, validated once. A pydantic-settings
    ``BaseSettings`` whose layers (:mod:`pipeline.settings.sources`) are chosen by
    :func:`~pipeline.settings.sources.load_settings`: build it with that, not ``Settings()``."""

    model_config = SettingsConfigDict(
        extra="forbid",
        validate_assignment=True,
        case_sensitive=True,
        env_prefix="RAG_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
    )

    profile: Profile = Field("demo", title="データプロファイル")
    cache_dir: Path = Field(DEFAULT_CACHE_DIR, title="キャッシュディレクトリ", json_schema_extra=OPERATOR)
    hub_mirror: Path | None = Field(
        None,
        title="ハブのミラー",
        description="'<owner>/<name>/...' の形でリポジトリを置いたローカルディレクトリ（オフライン環境用）。",
        json_schema_extra=OPERATOR,
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", title="デバイス", json_schema_extra=OPERATOR)
    corpus: CorpusSettings = Field(CorpusSettings(), json_schema_extra=OPERATOR)
    index: IndexSettings = IndexSettings()
    embedding: EmbeddingSettings = Field(EmbeddingSettings(), json_schema_extra=OPERATOR)
    retrieval: RetrievalSettings = RetrievalSettings()
    rerank: RerankSettings = RerankSettings()
    llm: LLMSettings = LLMSettings()
    generation: GenerationSettings = GenerationSettings()
    prompts: PromptSettings = PromptSettings()
    api: ApiSettings = Field(ApiSettings(), json_schema_extra=OPERATOR)
    db: DatabaseSettings = Field(DatabaseSettings(), json_schema_extra=OPERATOR)
    metrics: MetricsSettings = Field(MetricsSettings(), json_schema_extra=OPERATOR)
    admin: AdminSettings = Field(AdminSettings(), json_schema_extra=OPERATOR)

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir.expanduser()

    @property
    def demo(self) -> bool:
        """The bundled demo corpus (no downloads; answers marked as the demo's)."""
        return self.profile == "demo"

    def value(self, path: str) -> Any:
        """The value at a dotted path such as ``retrieval.top_k``."""
        section, _, name = path.rpartition(".")
        return getattr(getattr(self, section) if section else self, name)


def section_model(annotation: Any) -> type[_Section] | None:
    """The section model a field holds, or None for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, _Section):
        return annotation
    return None


def _session_fields() -> tuple[str, ...]:
    paths = []
    for name, field in Settings.model_fields.items():
        section = section_model(field.annotation)
        for sub, info in section.model_fields.items() if section else ():
            if (info.json_schema_extra or {}).get("scope") == "session":
                paths.append(f"{name}.{sub}")
    return tuple(paths)


#: Dotted paths of every field a session or request may set for itself, in schema order.
SESSION_FIELDS: tuple[str, ...] = _session_fields()


def is_session_field(path: str) -> bool:
    return path in SESSION_FIELDS


def _scope(info: Any) -> str | None:
    return (info.json_schema_extra or {}).get("scope") if isinstance(info.json_schema_extra, dict) else None


def is_operator_field(path: str) -> bool:
    """Whether only the operator may set this dotted path (the field or its section is
    marked ``scope="operator"``); an unknown path, and a whole section (which carries
    the operator's fields with it), count as the operator's."""
    section, _, name = path.partition(".")
    top = Settings.model_fields.get(section)
    if top is None or _scope(top) == "operator":
        return True
    if not name:
        return section_model(top.annotation) is not None
    model = section_model(top.annotation)
    info = model.model_fields.get(name) if model else None
    return info is None or _scope(info) == "operator"


def allowed_models(settings: Settings) -> list[str]:
    """The LLMs an admin may choose on the settings page: the default, the one running
    now, and those the operator listed in ``llm.allowed_models``."""
    default = LLMSettings.model_fields["model"].default
    return list(dict.fromkeys([default, settings.llm.model, *settings.llm.allowed_models]))
