from concurrent.futures import ThreadPoolExecutor

from pipeline.tokenizer import JapaneseTokenizer


def test_inflections_are_normalised_and_particles_dropped():
    words = JapaneseTokenizer()("北海道で本を書いた。")
    assert words == ["北海道", "本", "書く"]


def test_empty_and_symbol_only_text_gives_no_words():
    tokenize = JapaneseTokenizer()
    assert tokenize("") == []
    assert tokenize("　、。！？") == []


def test_threads_share_one_tokenizer_safely():
    tokenize = JapaneseTokenizer()
    expected = tokenize("梅雨前線が停滞している")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(tokenize, ["梅雨前線が停滞している"] * 40))
    assert all(r == expected for r in results)
