import json
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fugashi

from pipeline.text import tokenizer as tokenizer_module
from pipeline.text.tokenizer import JapaneseTokenizer, analyze, content_words, normalize
from tests.conftest import JSQUAD_PATH


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


def test_raw_features_give_the_words_of_fugashis_parsed_ones_on_jsquad():
    """content_words splits UniDic's raw features at commas; the words must be those of
    fugashi's parsed features, on every JSQuAD paragraph and question, unknown words,
    numbers and quoted commas."""
    data = json.loads(JSQUAD_PATH.read_text(encoding="utf-8"))["data"]
    paragraphs = [p for article in data for p in article["paragraphs"]]
    texts = [p["context"] for p in paragraphs] + [q["question"] for p in paragraphs for q in p["qas"]]
    for text in map(normalize, [*texts, 'ウミマ颬爓は1,000円と"東京,大阪"を書いた', "ＡＢＣ１２３ｱｲｳ"]):
        parsed = [word.base for word in analyze(text) if word.pos1 not in tokenizer_module._SKIPPED_POS]
        assert content_words(text) == parsed, text


def test_no_dictionary_entry_quotes_a_field_up_to_the_written_base_form():
    """What makes splitting at commas exact: of the dictionary's entries (unidic-lite's; their
    features are stored as text in sys.dic), none quotes a field up to the base form, while later
    fields are quoted (they may hold commas)."""
    strings = Path(fugashi.Tagger().dictionary_info[0]["filename"]).read_bytes().split(b"\0")
    entries = [s.decode(errors="replace") for s in strings if s.count(b",") > tokenizer_module._ORTH_BASE]
    assert len(entries) > 700_000
    through_base = tokenizer_module._ORTH_BASE + 1
    assert not [e for e in entries if '"' in ",".join(e.split(",", through_base)[:through_base])]
    assert any('"' in e for e in entries)
