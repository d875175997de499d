import json
import os
import tomllib
from pathlib import Path

import pytest

from pipeline.core.errors import SettingsError
from pipeline.settings.messages import allowed_values, field_info
from pipeline.settings.model import SESSION_FIELDS, is_session_field
from pipeline.settings.sources import (
    env_overridden,
    env_values,
    load_settings,
    save_file_values,
    session_changes,
    with_session_values,
    with_values,
)


def test_defaults_are_the_demo_profile(tmp_path):
    settings = load_settings(tmp_path / "absent.toml", environ={})
    assert settings.profile == "demo"
    assert settings.corpus.repo == "bundled:jsquad-valid-v1.3"
    assert settings.index.repo == ""
    assert settings.retrieval.mode == "auto"
    assert settings.index.nprobe == 128
    assert settings.embedding.model == "intfloat/multilingual-e5-large"
    assert settings.embedding.query_prefix == "query: "
    assert settings.embedding.max_length == 512
    assert settings.generation.max_new_tokens == 1024
    assert settings.generation.repetition_penalty == 1.2
    assert settings.generation.do_sample is False


def test_jawiki_profile_points_at_the_hub_corpus_and_index(tmp_path):
    settings = load_settings(tmp_path / "absent.toml", environ={"RAG_PROFILE": "jawiki"})
    assert settings.corpus.repo == "singletongue/wikipedia-utils"
    assert settings.corpus.config == "passages-c400-jawiki-20230403"
    assert settings.index.repo == "hotchpotch/wikipedia-passages-jawiki-embeddings"
    assert settings.index.file.endswith("multilingual-e5-large-passage/index_IVF2048_PQ256.faiss")
    assert settings.retrieval.mode == "auto"


def test_environment_overrides_the_file_which_overrides_the_preset(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text(
        'profile = "jawiki"\ncache_dir = "/data/cache"\n[retrieval]\ntop_k = 8\nmode = "bm25"\n'
        '[llm]\nbase_url = "http://file/v1"\n',
        encoding="utf-8",
    )
    settings = load_settings(
        path,
        environ={"RAG_RETRIEVAL_TOP_K": "3", "RAG_LLM_BASE_URL": "http://env/v1", "RAG_CACHE_DIR": "/env"},
    )
    assert settings.profile == "jawiki"
    assert settings.retrieval.top_k == 3
    assert settings.retrieval.mode == "bm25"  # from the file
    assert settings.llm.base_url == "http://env/v1"
    assert settings.cache_dir == Path("/env")


def test_settings_file_path_comes_from_the_environment(tmp_path):
    path = tmp_path / "elsewhere.toml"
    path.write_text("[index]\nnprobe = 16\n", encoding="utf-8")
    assert load_settings(environ={"RAG_SETTINGS_FILE": str(path)}).index.nprobe == 16


def test_env_variable_names_follow_one_rule():
    values = env_values(
        {
            "RAG_PROFILE": "jawiki",
            "RAG_LLM_BACKEND": "none",
            "RAG_LLM_API_KEY": "k",
            "RAG_LLM_MODEL": "m",
            "RAG_INDEX_NPROBE": "4",
            "RAG_UNRELATED": "x",
            "PATH": "/bin",
        }
    )
    assert values == {
        "profile": "jawiki",
        "llm": {"backend": "none", "api_key": "k", "model": "m"},
        "index": {"nprobe": "4"},
    }


def test_a_variable_naming_no_setting_is_ignored_with_a_warning(caplog):
    """A typo, a lower-case spelling or a whole section (which pydantic-settings would parse
    as JSON) neither stops the start nor sets anything; the log names each."""
    environ = {
        "RAG_LLM_BASEURL": "http://x",
        "RAG_LLM": '{"model": "json"}',
        "rag_profile": "jawiki",
        "RAG_LLM_MODEL": "m",
    }
    settings = load_settings(path="/nonexistent.toml", environ=environ)
    assert settings.llm.model == "m" and settings.llm.base_url != "http://x" and settings.profile == "demo"
    for name in ("RAG_LLM_BASEURL", "RAG_LLM", "rag_profile"):
        assert f"{name} names no setting" in caplog.text


def test_a_folder_where_the_settings_file_should_be_is_a_settings_error(tmp_path):
    """A container's bind mount of a missing file leaves a folder: said, never skipped.
    A device such as os.devnull is how callers ask for defaults, so it stays allowed."""
    with pytest.raises(SettingsError) as caught:
        load_settings(path=tmp_path, environ={})
    assert str(tmp_path) in caught.value.ja and "フォルダー" in caught.value.ja
    assert load_settings(path=os.devnull, environ={}).profile == "demo"
    with pytest.raises(SettingsError):
        load_settings(path="/nonexistent.toml", environ={"RAG_SECRETS_FILE": str(tmp_path)})


def test_list_settings_take_comma_separated_variables():
    """pydantic-settings would read a list variable as JSON; these stay comma-separated."""
    settings = load_settings(
        path="/nonexistent.toml",
        environ={"RAG_ADMIN_USERS": "a@example.com, b@example.com", "RAG_LLM_ALLOWED_MODELS": "m1,m2"},
    )
    assert settings.admin.users == ["a@example.com", "b@example.com"]
    assert settings.llm.allowed_models == ["m1", "m2"]


def test_api_key_is_secret_in_reprs():
    settings = load_settings(environ={"RAG_LLM_API_KEY": "sk-secret-value"}, path="/nonexistent.toml")
    assert settings.llm.api_key.get_secret_value() == "sk-secret-value"
    assert "sk-secret-value" not in repr(settings)
    assert "sk-secret-value" not in settings.model_dump_json()


@pytest.mark.parametrize(
    ("env", "field", "en_part", "ja_part"),
    [
        (
            {"RAG_RETRIEVAL_MODE": "best"},
            "retrieval.mode",
            "one of 'auto', 'bm25', 'dense', 'hybrid'",
            "'auto', 'bm25', 'dense', 'hybrid' のいずれか",
        ),
        ({"RAG_RETRIEVAL_TOP_K": "0"}, "retrieval.top_k", ">= 1 and <= 100", "1 以上 100 以下の整数"),
        ({"RAG_RETRIEVAL_TOP_K": "many"}, "retrieval.top_k", "an integer", "整数"),
        (
            {"RAG_PROFILE": "full"},
            "profile",
            "one of 'demo', 'jawiki', 'custom'",
            "'demo', 'jawiki', 'custom' のいずれか",
        ),
        (
            {"RAG_LLM_GPU_MEMORY_UTILIZATION": "1.2"},
            "llm.gpu_memory_utilization",
            "> 0.0 and <= 0.99",
            "0.0 超 0.99 以下の数値",
        ),
        ({"RAG_INDEX_NPROBE": "-5"}, "index.nprobe", ">= 1", "1 以上"),
        (
            {"RAG_GENERATION_DO_SAMPLE": "perhaps"},
            "generation.do_sample",
            "true or false",
            "true または false",
        ),
    ],
)
def test_invalid_values_name_field_value_and_range(env, field, en_part, ja_part):
    with pytest.raises(SettingsError) as caught:
        load_settings(environ=env, path="/nonexistent.toml")
    problem = caught.value.problems[0]
    assert problem.field == field
    value = next(iter(env.values()))
    assert field in caught.value.en and repr(value) in caught.value.en and en_part in caught.value.en
    assert field in caught.value.ja and repr(value) in caught.value.ja and ja_part in caught.value.ja
    assert "無効です" in caught.value.ja


def test_extra_args_that_do_not_split_are_refused_without_echoing_them():
    """vllm serve could not start with an unclosed quote; the value may hold an --api-key."""
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={"RAG_LLM_EXTRA_ARGS": '--api-key "sk-s3cret'}, path="/nonexistent.toml")
    assert caught.value.problems[0].field == "llm.extra_args"
    assert "引用符" in caught.value.ja and "sk-s3cret" not in caught.value.ja + caught.value.en


def test_every_invalid_field_is_reported_at_once():
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={"RAG_RETRIEVAL_TOP_K": "0", "RAG_RETRIEVAL_MODE": "magic"}, path="/none.toml")
    assert {p.field for p in caught.value.problems} == {"retrieval.top_k", "retrieval.mode"}


def test_unknown_keys_in_the_file_are_refused(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text("[retrieval]\ntopk = 3\n", encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        load_settings(path, environ={})
    assert caught.value.problems[0].field == "retrieval.topk"
    assert "不明な設定項目" in caught.value.ja


def test_a_file_that_is_not_toml_is_a_settings_error(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text("[retrieval\ntop_k = = 3", encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        load_settings(path, environ={})
    assert str(path) in caught.value.en
    assert "TOML" in caught.value.ja


def test_allowed_values_describe_literals_and_bounds():
    assert allowed_values(field_info("retrieval.mode"))[0] == "one of 'auto', 'bm25', 'dense', 'hybrid'"
    assert allowed_values(field_info("llm.tensor_parallel_size")) == (
        "an integer >= 1 and <= 64",
        "1 以上 64 以下の整数",
    )


def test_credentials_come_from_the_secrets_file_and_nothing_else(tmp_path):
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(
        '[llm]\napi_key = "sk-from-secrets"\nbase_url = "http://secret/v1"\nmodel = "ignored"\n'
        '[other_app]\ntoken = "not ours"\n',
        encoding="utf-8",
    )
    settings = load_settings("/none.toml", environ={"RAG_SECRETS_FILE": str(secrets)})
    assert settings.llm.api_key.get_secret_value() == "sk-from-secrets"
    assert settings.llm.base_url == "http://secret/v1"
    assert settings.llm.model == "elyza/ELYZA-japanese-Llama-2-13b-instruct"
    env_wins = load_settings("/none.toml", environ={"RAG_SECRETS_FILE": str(secrets), "RAG_LLM_API_KEY": "sk-env"})
    assert env_wins.llm.api_key.get_secret_value() == "sk-env"


def test_values_are_changed_and_validated_by_dotted_path():
    settings = load_settings("/none.toml", environ={})
    changed = with_values(settings, {"retrieval.top_k": 9, "generation.temperature": 0.3})
    assert changed.retrieval.top_k == 9 and changed.generation.temperature == 0.3
    assert settings.retrieval.top_k == 5  # the original is untouched
    with pytest.raises(SettingsError) as caught:
        with_values(settings, {"retrieval.top_k": 500})
    assert caught.value.problems[0].field == "retrieval.top_k"


def test_switching_profile_brings_its_preset_but_keeps_customisations():
    demo = with_values(load_settings("/none.toml", environ={}), {"retrieval.top_k": 7})
    jawiki = with_values(demo, {"profile": "jawiki"})
    assert jawiki.corpus.repo == "singletongue/wikipedia-utils" and jawiki.index.repo
    assert jawiki.retrieval.top_k == 7
    assert with_values(jawiki, {"profile": "demo"}).corpus.repo == "bundled:jsquad-valid-v1.3"


def test_saving_writes_only_the_saved_values_into_the_file(tmp_path):
    path = tmp_path / "conf" / "settings.toml"
    path.parent.mkdir()
    path.write_text("[retrieval]\ntop_k = 8\n# kept by hand\n", encoding="utf-8")
    environ = {"RAG_LLM_API_KEY": "sk-secret", "RAG_ADMIN_USERS": "root@example.com", "RAG_CACHE_DIR": "/srv/x",
               "RAG_LLM_BASE_URL": "http://127.0.0.1:9/v1", "RAG_LLM_BACKEND": "remote"}  # fmt: skip
    saved = save_file_values({"llm.gpu_memory_utilization": 0.7}, path=path, environ=environ)
    assert tomllib.loads(path.read_text(encoding="utf-8")) == {
        "retrieval": {"top_k": 8},
        "llm": {"gpu_memory_utilization": 0.7},
    }  # fmt: skip: no environment value (admins, URL, backend, cache) and no secret reached the file
    assert saved.written == {"llm.gpu_memory_utilization": 0.7} and saved.backup is None
    assert saved.settings.llm.base_url == "http://127.0.0.1:9/v1" and saved.settings.retrieval.top_k == 8
    reloaded = load_settings(path, environ={})
    assert reloaded.admin.users == [] and reloaded.llm.backend == "auto"  # the grant did not outlive the variable
    removed = save_file_values({}, remove=["retrieval.top_k", "llm.model"], path=path, environ={})
    assert removed.removed == ["retrieval.top_k"]
    assert tomllib.loads(path.read_text(encoding="utf-8")) == {"llm": {"gpu_memory_utilization": 0.7}}


def test_an_invalid_value_is_refused_before_the_file_changes(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text("[retrieval]\ntop_k = 8\n", encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        save_file_values({"retrieval.top_k": 500}, path=path, environ={})
    assert caught.value.problems[0].field == "retrieval.top_k"
    assert path.read_text(encoding="utf-8") == "[retrieval]\ntop_k = 8\n"


def test_an_unreadable_settings_file_is_kept_as_a_backup_before_saving(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text("this is = = not toml", encoding="utf-8")
    backup = save_file_values({"retrieval.top_k": 4}, path=path, environ={}).backup
    assert backup is not None and backup.read_text(encoding="utf-8") == "this is = = not toml"
    assert backup.name.startswith("settings.toml.bad-")
    assert load_settings(path, environ={}).retrieval.top_k == 4


def test_session_fields_and_environment_overrides():
    assert is_session_field("retrieval.top_k") and is_session_field("generation.temperature")
    assert is_session_field("prompts.system") and not is_session_field("llm.gpu_memory_utilization")
    assert not is_session_field("profile") and not is_session_field("retrieval.max_query_chars")
    assert {path.split(".")[0] for path in SESSION_FIELDS} == {"index", "retrieval", "generation", "prompts"}
    assert env_overridden({"RAG_PROFILE": "demo", "RAG_LLM_BASE_URL": "x", "HOME": "/"}) == {"profile", "llm.base_url"}


def test_a_session_changes_only_session_fields():
    server = load_settings("/none.toml", environ={})
    session = with_session_values(server, {"retrieval.top_k": 3, "prompts.system": "短く答えてください。"})
    assert session_changes(session, server) == {"retrieval.top_k": 3, "prompts.system": "短く答えてください。"}
    assert with_session_values(server, {}) is server
    with pytest.raises(SettingsError) as caught:
        with_session_values(server, {"llm.base_url": "http://elsewhere/v1", "retrieval.top_k": 3})
    assert caught.value.problems[0].field == "llm.base_url" and "サーバー全体の設定" in caught.value.ja


def test_the_custom_profile_takes_its_build_from_the_manifest_and_keeps_it_through_overrides(tmp_path):
    config = "passages-c400-jawiki-20251201"
    manifest = tmp_path / "out" / "singletongue" / "wikipedia-utils" / config / "manifest.json"
    manifest.parent.mkdir(parents=True)
    recorded = {"RAG_PROFILE": "jawiki", "RAG_HUB_MIRROR": "/elsewhere", "RAG_CORPUS_CONFIG": config,
                "RAG_INDEX_FILE": f"faiss_indexes/{config}/m-passage/index_IVF16_PQ192.faiss"}  # fmt: skip
    manifest.write_text(json.dumps({"dump_date": "2025-12-01", "settings": recorded}), encoding="utf-8")
    settings = load_settings("/none.toml", environ={"RAG_PROFILE": "custom", "RAG_CORPUS_BUILD": str(tmp_path / "out")})
    assert settings.corpus.repo == str(manifest.parent.parent) and settings.corpus.config == config
    assert settings.index.repo == str(tmp_path / "out" / "hotchpotch" / "wikipedia-passages-jawiki-embeddings")
    assert settings.index.file.endswith("index_IVF16_PQ192.faiss") and settings.hub_mirror is None
    session = with_session_values(settings, {"retrieval.top_k": 3})  # what every search and request does
    assert session.retrieval.top_k == 3 and session.corpus.repo == settings.corpus.repo
    with pytest.raises(SettingsError) as caught:
        load_settings("/none.toml", environ={"RAG_PROFILE": "custom"})
    assert caught.value.problems[0].field == "corpus.build" and "RAG_CORPUS_BUILD" in caught.value.ja
