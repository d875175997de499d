"""Property-based tests where they pay: the settings schema and the citation parser."""

import re
import unicodedata
from typing import get_args

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic.fields import FieldInfo

from pipeline.core.errors import SettingsError
from pipeline.settings.messages import field_info
from pipeline.settings.sources import load_settings, with_values
from pipeline.text.citations import parse_citations

BOUNDED = [
    "retrieval.top_k", "retrieval.hybrid_candidates", "retrieval.max_query_chars", "index.nprobe",
    "embedding.max_length", "rerank.candidates", "llm.gpu_memory_utilization", "llm.tensor_parallel_size",
    "llm.max_model_len", "llm.timeout_s", "generation.max_new_tokens", "generation.temperature",
    "generation.top_p", "generation.top_k", "generation.repetition_penalty", "api.max_concurrent_generations",
]  # fmt: skip
BASE = load_settings(environ={}, path="/none.toml")


def numeric_field(path: str) -> FieldInfo:
    """The field, or for 'auto' | number fields its number member."""
    info = field_info(path)
    members = [FieldInfo.from_annotation(a) for a in get_args(info.annotation) if a is not type(None)]
    return next((m for m in members if m.annotation in (int, float)), info)


def bounds(path: str) -> tuple[float | None, float | None, float | None, float | None]:
    ge = gt = le = lt = None
    for meta in numeric_field(path).metadata:
        ge = getattr(meta, "ge", ge)
        gt = getattr(meta, "gt", gt)
        le = getattr(meta, "le", le)
        lt = getattr(meta, "lt", lt)
    return ge, gt, le, lt


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(BOUNDED), value=st.one_of(st.integers(-(10**6), 10**6), st.floats(-1e6, 1e6)))
def test_a_bounded_value_is_accepted_exactly_when_it_is_in_range(path, value):
    ge, gt, le, lt = bounds(path)
    is_int = numeric_field(path).annotation is int
    in_range = (
        (ge is None or value >= ge) and (gt is None or value > gt)
        and (le is None or value <= le) and (lt is None or value < lt)
        and (not is_int or float(value).is_integer())
    )  # fmt: skip
    try:
        updated = with_values(BASE, {path: value})
    except SettingsError as exc:
        assert not in_range
        assert [p.field for p in exc.problems] == [path]
        assert path in exc.problems[0].ja and "無効です" in exc.problems[0].ja
    else:
        assert in_range
        section, name = path.split(".")
        assert getattr(getattr(updated, section), name) == value


@settings(max_examples=100, deadline=None)
@given(path=st.sampled_from(BOUNDED), value=st.one_of(st.text(max_size=8), st.lists(st.integers(), max_size=2)))
def test_wrong_types_are_refused_with_the_field_named(path, value):
    try:
        with_values(BASE, {path: value})
    except SettingsError as exc:
        assert exc.problems[0].field == path
    else:  # only text that is a number in range gets through, as the environment variables need
        assert isinstance(value, str)
        float(value)


MARKER = st.builds(lambda n, wide: f"［{n}］" if wide else f"[{n}]", st.integers(0, 20), st.booleans())
PIECE = st.one_of(MARKER, st.sampled_from(["梅雨は雨季である", "。", "！", "北海道", "\n", " ", "それは", "です。"]))


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(PIECE, max_size=30), sources=st.integers(0, 10))
def test_every_citation_is_attributed_once_and_classified(pieces, sources):
    answer = "".join(pieces)
    report = parse_citations(answer, sources)
    cited = [int(unicodedata.normalize("NFKC", n)) for n in re.findall(r"[\[［]([0-9０-９]+)[\]］]", answer)]
    assert sorted(n for s in report.sentences for n in s.numbers) == sorted(cited)
    assert set(report.used) == {n for n in cited if 1 <= n <= sources}
    assert set(report.invalid) == {n for n in cited if not 1 <= n <= sources}
    assert len(report.used) == len(set(report.used)) and len(report.invalid) == len(set(report.invalid))
    assert "".join(s.text for s in report.sentences).replace(" ", "") == answer.replace("\n", "").replace(" ", "")
