from pipeline.generation.llm import gpu_available, open_backend, request_kwargs, resolve_backend, vllm_available
from pipeline.settings.sources import load_settings


def settings(**llm):
    return load_settings(environ={}, path="/none.toml", overrides={"llm": llm})


def test_auto_backend_is_remote_with_a_url_and_none_without_gpu():
    assert resolve_backend(settings(base_url="http://x/v1")) == "remote"
    local_engine = vllm_available(settings()) and gpu_available()  # a GPU host with vLLM
    assert resolve_backend(settings()) == ("local" if local_engine else "none")
    assert resolve_backend(settings(backend="local")) == "local"
    assert resolve_backend(settings(backend="none", base_url="http://x/v1")) == "none"


def test_backend_comes_from_the_environment():
    assert (
        resolve_backend(
            load_settings(environ={"RAG_LLM_BACKEND": "none", "RAG_LLM_BASE_URL": "http://x/v1"}, path="/none.toml")
        )
        == "none"
    )


def test_greedy_by_default_and_seed_sampling_defaults():
    kwargs = request_kwargs(settings(), max_tokens=1024)
    assert kwargs["temperature"] == 0.0 and kwargs["top_p"] == 1.0 and kwargs["max_tokens"] == 1024
    assert kwargs["extra_body"] == {"top_k": -1, "repetition_penalty": 1.2, "add_special_tokens": False}


def test_the_status_shows_the_llm_url_without_its_password():
    """A status page is open to every visitor; the URL may carry credentials (user:pass@)."""
    configured = settings(backend="remote", base_url="http://rag:pa55word@127.0.0.1:9/v1")
    status = open_backend(configured).status(configured, timeout_s=0.5)
    assert status.url == "http://rag:***@127.0.0.1:9/v1" and status.reachable is False
