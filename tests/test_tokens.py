import shutil

from pipeline.generation.token_count import EstimatedTokenCounter, TokenizerCounter, load_token_counter
from pipeline.settings.sources import load_settings


def test_estimate_is_generous_for_japanese():
    counter = EstimatedTokenCounter()
    assert not counter.exact
    assert counter.count("梅雨" * 50) == 161
    assert counter.count("a" * 100) == 31


def test_the_models_tokenizer_is_used_when_its_files_are_local(tmp_path, minilm_dir):
    mirror = tmp_path / "mirror"
    shutil.copytree(minilm_dir, mirror / "elyza" / "ELYZA-japanese-Llama-2-13b-instruct")
    settings = load_settings(
        environ={}, path="/none.toml", overrides={"hub_mirror": str(mirror), "cache_dir": str(tmp_path)}
    )
    counter = load_token_counter(settings)
    assert isinstance(counter, TokenizerCounter) and counter.exact
    assert counter.count("hello world") == 2


def test_without_tokenizer_files_the_count_is_estimated(tmp_path):
    settings = load_settings(environ={}, path="/none.toml", overrides={"cache_dir": str(tmp_path)})
    assert isinstance(load_token_counter(settings), EstimatedTokenCounter)
