import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import fugashi

from pipeline.text import tokenizer as tokenizer_module
from pipeline.text.tokenizer import JapaneseTokenizer


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


def test_taggers_are_reused_across_threads_that_come_and_go(monkeypatch):
    # fugashi never frees a tagger's memory, so short-lived server threads must not each
    # create one: only as many taggers as callers at the same moment.
    created = []

    class CountingTagger(fugashi.Tagger):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            created.append(self)

    monkeypatch.setattr(tokenizer_module.fugashi, "Tagger", CountingTagger)
    monkeypatch.setattr(tokenizer_module, "_idle_taggers", queue.SimpleQueue())
    for _ in range(20):  # sequential short-lived threads, several tokenizer objects
        thread = threading.Thread(target=JapaneseTokenizer(), args=("梅雨前線が停滞している",))
        thread.start()
        thread.join()
    assert len(created) == 1

    barrier = threading.Barrier(4)

    def together(text: str) -> list[str]:
        barrier.wait()
        return JapaneseTokenizer()(text)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(together, ["北海道で本を書いた。"] * 4))
    assert results == [["北海道", "本", "書く"]] * 4
    assert len(created) <= 4
