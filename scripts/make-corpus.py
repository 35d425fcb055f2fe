#!/usr/bin/env python3
"""Writes a corpus of short English-like documents for the data-pipeline benchmark
(docs/benchmarks.md, "Data pipeline at scale"): ROWS rows of 13-22 words (about 60-100
tokens with the fixture GPT-NeoX tokenizer), as JSON Lines and Parquet, with a fixed seed.

    /work/pyenv/bin/python scripts/make-corpus.py OUT_DIR 10000 100000 1000000

writes OUT_DIR/corpus-10k.jsonl, OUT_DIR/corpus-10k.parquet, ... Each row is
{"id": int, "text": str}. Needs pyarrow for the Parquet files.
"""

import json
import random
import sys
from pathlib import Path

WORDS = """the of and to in is was for on that with as by at from it an be this are which or
his had not but have were one they all their has been also more new first time after two other
its would into who only years most over may some many such these can made used city during later
year then before where when under world about three between both state three through while well
people there early known life part high several long school since family century under work
government found became number second small following national against being water system
music great without each large name area common called light power river south north east west
game group house night place point public three until music early paper story study market
""".split()
SYLLABLES = "ba be bi bo bu ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu ra re ri ro ru sa se si so su ta te ti to tu".split()


def word(rng: random.Random) -> str:
    if rng.random() < 0.8:
        return rng.choice(WORDS)
    # An invented word, split into a few tokens by the BPE.
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))


def document(rng: random.Random) -> str:
    words = [word(rng) for _ in range(rng.randint(13, 22))]
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def label(rows: int) -> str:
    return f"{rows // 1_000_000}M" if rows % 1_000_000 == 0 else f"{rows // 1000}k"


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for rows in map(int, sys.argv[2:]):
        rng = random.Random(rows)
        texts = [document(rng) for _ in range(rows)]
        stem = out / f"corpus-{label(rows)}"
        with open(f"{stem}.jsonl", "w") as f:
            for i, text in enumerate(texts):
                f.write(json.dumps({"id": i, "text": text}) + "\n")
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"id": pa.array(range(rows), pa.int64()), "text": texts})
        pq.write_table(table, f"{stem}.parquet")
        print(f"{stem}: {rows} rows", file=sys.stderr)


if __name__ == "__main__":
    main()
