"""Why generation failed, as a notice the user can act on, keeping what was said."""

from __future__ import annotations

import httpx

from pipeline.core.schema import Notice
from pipeline.generation.engine_llm import EngineStatusError

#: What reaching or reading the LLM can raise (ValueError: a malformed stream).
GENERATION_ERRORS: tuple[type[Exception], ...] = (EngineStatusError, httpx.HTTPError, ValueError)


def generation_failure(exc: Exception, url: str, timeout_s: float, started_answer: bool) -> Notice:
    """A Japanese explanation of a failed generation; the partial answer stays."""
    kept = "ここまでの回答は途中までのものです。" if started_answer else "検索結果のみを表示します。"
    if isinstance(exc, httpx.TimeoutException):
        return Notice(
            code="llm_timeout",
            en=f"the LLM at {url} sent nothing for {timeout_s:.0f}s",
            ja=f"LLM サーバーが {timeout_s:.0f} 秒以上応答しませんでした。{kept}",
        )
    if (
        isinstance(exc, EngineStatusError)
        and exc.status_code == 400
        and "chat template" in exc.message.lower().replace("_", " ")
    ):
        return Notice(
            code="llm_no_chat_template",
            en=f"the model at {url} has no chat template: {exc.message}",
            ja="このモデルにはチャットテンプレートがないため、回答を生成できませんでした。"
            f"設定の「プロンプト形式」を llama2 にするか、チャットテンプレートのあるモデルを選んでください。{kept}",
        )
    if isinstance(exc, EngineStatusError):
        return Notice(
            code="llm_error",
            en=f"the LLM at {url} answered HTTP {exc.status_code}: {exc.message}",
            ja=f"LLM サーバーがエラー（HTTP {exc.status_code}）を返しました。{kept}",
        )
    if isinstance(exc, httpx.ConnectError) and not started_answer:
        return Notice(
            code="llm_unreachable",
            en=f"cannot connect to the LLM at {url}",
            ja=f"LLM サーバー（{url}）に接続できません。{kept}",
        )
    if isinstance(exc, ValueError):
        return Notice(
            code="llm_malformed",
            en=f"the LLM at {url} sent a malformed response: {exc}",
            ja=f"LLM サーバーの応答が不正な形式でした。{kept}",
        )
    return Notice(
        code="llm_interrupted",
        en=f"the connection to the LLM at {url} broke off: {type(exc).__name__}",
        ja=f"LLM サーバーとの接続が途中で切れました。{kept}",
    )


NO_LLM = Notice(
    code="no_llm",
    en="no LLM is configured: showing search results only",
    ja="LLM が設定されていないため、回答文は生成していません（検索のみ）。",
)
