"""``bergson_rs.build``/``score``: the CLI's commands as functions, equal to the ``bergson``
binary run with the same flags."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import bergson_rs

REPO = Path(__file__).resolve().parents[3]
MODEL = REPO / "tests/fixtures/models/llama"
DATA = REPO / "tests/fixtures/datasets/prompts.jsonl"
BINARY = REPO / "target/debug/bergson"
FLAGS = dict(
    model=str(MODEL),
    dataset=str(DATA),
    prompt_column="prompt",
    completion_column="completion",
    projection_dim=8,
    include_bias=True,
)


def cli_flags(cfg: dict) -> list[str]:
    out = []
    for k, v in cfg.items():
        out += [f"--{k}", "true" if v is True else "false" if v is False else str(v)]
    return out


needs_binary = pytest.mark.skipif(
    not BINARY.exists(),
    reason=f"{BINARY} is not built (`cargo build -p bergson-cli` or `cargo test` makes it)",
)


def test_build_writes_an_index(tmp_path):
    summary = bergson_rs.build(tmp_path / "idx", **FLAGS)
    assert isinstance(summary, str) and summary
    g = bergson_rs.load_gradients(tmp_path / "idx")
    assert g.shape[0] > 0 and g.shape[1] > 0
    att = bergson_rs.Attributor(tmp_path / "idx")
    q = {n: torch_rows(g, lo, hi) for n, (lo, hi) in offsets(tmp_path / "idx").items()}
    top = att.search(q, 1)
    # The best inner product of a row is at least its inner product with itself.
    assert (top.values[:, 0] >= (torch_rows(g, 0, g.shape[1]) ** 2).sum(1) - 1e-3).all()


def offsets(index: Path):
    import json

    return bergson_rs.column_offsets(json.loads((index / "info.json").read_text())["grad_sizes"])


def torch_rows(g, lo, hi):
    import numpy as np
    import torch

    return torch.from_numpy(np.array(g[:, lo:hi], dtype=np.float32))


@needs_binary
def test_build_equals_the_cli(tmp_path):
    bergson_rs.build(tmp_path / "py", **FLAGS)
    subprocess.run(
        [str(BINARY), "build", str(tmp_path / "cli"), *cli_flags(FLAGS), "--quiet"],
        check=True,
        capture_output=True,
    )
    for name in ("gradients.bin", "info.json"):
        assert (tmp_path / "py" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()


@needs_binary
def test_score_equals_the_cli(tmp_path):
    query = dict(FLAGS, split="train[:2]")
    bergson_rs.build(tmp_path / "q", **query)
    cfg = dict(FLAGS, query_path=str(tmp_path / "q"), score="individual")
    bergson_rs.score(tmp_path / "py", **cfg)
    subprocess.run(
        [str(BINARY), "score", str(tmp_path / "cli"), *cli_flags(cfg), "--quiet"],
        check=True,
        capture_output=True,
    )
    ours = bergson_rs.load_scores(tmp_path / "py")
    theirs = bergson_rs.load_scores(tmp_path / "cli")
    assert ours.num_scores == 2 and len(ours) == len(theirs)
    assert (ours[:] == theirs[:]).all()


def test_bad_flags_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="no_such_flag"):
        bergson_rs.build(tmp_path / "x", no_such_flag=3, **FLAGS)
    with pytest.raises(ValueError, match="projection_dim"):
        bergson_rs.build(tmp_path / "x", **dict(FLAGS, projection_dim="many"))
    with pytest.raises((ValueError, FileNotFoundError)):
        bergson_rs.build(tmp_path / "x", **dict(FLAGS, dataset=str(tmp_path / "missing.jsonl")))
