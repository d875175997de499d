"""Build the bundled demo corpus from the JSQuAD v1.3 validation set.

    python scripts/build_demo_corpus.py ../shared/data/jsquad-valid-v1.3.json

Writes ``pipeline/data/jsquad-valid-v1.3/`` laid out like a hub dataset repo (a dataset
card with its ``configs`` and licence, and one parquet file), so that the demo profile
loads through the same ``datasets`` code path as the full jawiki corpus.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.assets.hub import BUNDLED_DIR
from pipeline.evaluation.squad import read_squad
from pipeline.retrieval.corpus import PASSAGE_SCHEMA

DEMO_NAME = "jsquad-valid-v1.3"
DATA_FILE = "default/train-00000-of-00001.parquet"

CARD = """---
license: cc-by-sa-4.0
language:
- ja
configs:
- config_name: default
  data_files:
  - split: train
    path: {data_file}
---
# JSQuAD v1.3 validation paragraphs as Wikipedia passages (demo corpus)

{passages:,} passages, one per paragraph of the JSQuAD v1.3 validation set, in the
`singletongue/wikipedia-utils` passage schema (id, pageid, revid, title, section, text).
JSQuAD does not record Wikipedia page, revision or section ids, so `pageid` and `revid`
are null and `section` is empty.

## Source and licence

- JSQuAD v1.3 (validation split), part of JGLUE: Kentaro Kurihara, Daisuke Kawahara,
  Tomohide Shibata, "JGLUE: Japanese General Language Understanding Evaluation",
  LREC 2022. https://github.com/yahoojapan/JGLUE (Yahoo Japan Corporation and
  Waseda University).
- The paragraphs are from Japanese Wikipedia (https://ja.wikipedia.org/).
- Licence: Creative Commons Attribution-ShareAlike 4.0 International (CC BY-SA 4.0),
  https://creativecommons.org/licenses/by-sa/4.0/. This derived file is distributed under
  the same licence. Built by `scripts/build_demo_corpus.py`.
"""


def build(source: Path, target: Path) -> int:
    passages = read_squad([source], with_questions=[False]).passages
    table = pa.Table.from_pylist(passages, schema=PASSAGE_SCHEMA)
    (target / DATA_FILE).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target / DATA_FILE, compression="zstd")
    (target / "README.md").write_text(CARD.format(data_file=DATA_FILE, passages=len(passages)), encoding="utf-8")
    return len(passages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="jsquad-valid-v1.3.json")
    parser.add_argument("--target", type=Path, default=BUNDLED_DIR / DEMO_NAME)
    args = parser.parse_args()
    count = build(args.source, args.target)
    print(f"wrote {count} passages to {args.target}")


if __name__ == "__main__":
    main()
