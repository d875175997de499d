from pipeline.text.sentences import best_sentence, sentence_spans
from pipeline.text.tokenizer import JapaneseTokenizer

TEXT = "梅雨は東アジアの雨季である。北海道と小笠原諸島には梅雨がない！「梅の実」に由来するとされる。\n改行後の文"


def test_sentences_end_at_japanese_stops_and_line_breaks():
    assert [TEXT[a:b] for a, b in sentence_spans(TEXT)] == [
        "梅雨は東アジアの雨季である。",
        "北海道と小笠原諸島には梅雨がない！",
        "「梅の実」に由来するとされる。",
        "改行後の文",
    ]


def test_the_best_sentence_shares_the_most_words():
    start, end = best_sentence("梅雨がないのは北海道とどこか", TEXT, JapaneseTokenizer())
    assert TEXT[start:end] == "北海道と小笠原諸島には梅雨がない！"
    assert best_sentence("量子コンピュータ", TEXT, JapaneseTokenizer()) is None
