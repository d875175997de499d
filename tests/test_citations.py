from pipeline.text.citations import parse_citations


def test_markers_in_every_common_form_are_found():
    report = parse_citations("梅雨は雨季である[1]。台風は［２］と[3, 4]と[1][2]に書かれている。", 4)
    assert [s.numbers for s in report.sentences] == [[1], [2, 3, 4, 1, 2]]
    assert report.used == [1, 2, 3, 4] and report.invalid == []


def test_a_marker_after_the_full_stop_belongs_to_the_sentence_before():
    report = parse_citations("北海道に梅雨はない。[2] 小笠原諸島も同様である。[1]", 2)
    assert [(s.text.strip(), s.numbers) for s in report.sentences] == [
        ("北海道に梅雨はない。[2]", [2]),
        ("小笠原諸島も同様である。[1]", [1]),
    ]


def test_numbers_without_a_source_are_flagged_not_dropped():
    report = parse_citations("根拠は[7]と[0]と[2]。", 3)
    assert report.used == [2]
    assert report.invalid == [7, 0]
    assert report.sentences[0].numbers == [7, 0, 2]


def test_text_without_citations():
    report = parse_citations("資料からは分かりません。", 3)
    assert report.used == [] and report.invalid == [] and report.sentences[0].numbers == []
