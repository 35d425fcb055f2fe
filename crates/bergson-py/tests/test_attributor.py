"""Attributor.search/.trace against Python Bergson 2.5.1's Attributor on the same index
(fixtures/attributor.pt, made by make_fixtures.py), and against a direct computation."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import bergson_rs  # noqa: E402
from trainer_run import query_rows, trained_llama  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
INDEX = FIXTURES / "llama_adamw" / "train" / "epoch_0"
REF = torch.load(FIXTURES / "attributor.pt", weights_only=False)


def assert_same_hits(ours, theirs, atol=1e-5):
    scores, indices = ours
    ref_scores, ref_indices = theirs
    torch.testing.assert_close(scores.float(), ref_scores.float(), rtol=1e-5, atol=atol)
    assert torch.equal(indices.long(), ref_indices.long())


@pytest.mark.parametrize("unit", [False, True])
def test_search_equals_bergson(unit):
    att = bergson_rs.Attributor(INDEX, unit_norm=unit)
    q = REF["queries"]
    assert_same_hits(att.search(q, 5), REF[f"search_{unit}"])
    assert_same_hits(att.search(q, None, reverse=True), REF[f"search_all_reverse_{unit}"])
    mods = {"layers.0.mlp.up_proj", "layers.1.self_attn.v_proj"}
    assert_same_hits(att.search(q, 4, modules=mods), REF[f"search_modules_{unit}"])


@pytest.mark.parametrize("unit", [False, True])
def test_trace_equals_bergson(unit):
    att = bergson_rs.Attributor(INDEX, unit_norm=unit)
    model = trained_llama()
    with att.trace(model.model, 6) as result:
        model(**query_rows()).loss.backward()
    assert_same_hits((result.scores, result.indices), REF[f"trace_{unit}"])


def test_search_equals_direct_inner_products():
    att = bergson_rs.Attributor(INDEX)
    grads = torch.from_numpy(np.asarray(bergson_rs.load_gradients(INDEX), np.float32))
    q = torch.randn(3, grads.shape[1], generator=torch.Generator().manual_seed(0))
    offsets = bergson_rs.column_offsets(att.grad_sizes)
    queries = {n: q[:, lo:hi] for n, (lo, hi) in offsets.items()}
    top = att.search(queries, 7)
    want = torch.topk(q.double() @ grads.double().T, 7)
    torch.testing.assert_close(top.values.double(), want.values, rtol=1e-5, atol=1e-5)
    assert torch.equal(top.indices, want.indices)


def test_bad_inputs():
    with pytest.raises(ValueError, match="does not exist"):
        bergson_rs.Attributor("/nonexistent/index")
    att = bergson_rs.Attributor(INDEX)
    with pytest.raises(KeyError, match="lack"):
        att.search({}, 3)
    with pytest.raises(ValueError, match="at least 1"):
        att.search(REF["queries"], 0)
    model = trained_llama()
    with pytest.raises(ValueError, match="No grads collected"):
        with att.trace(model.model, 3):
            pass


def test_readers():
    g = bergson_rs.load_gradients(INDEX)
    assert g.shape == (24, 14 * 256) and g.dtype == np.float16
    mg = bergson_rs.load_module_gradients(INDEX)
    assert "layers.0.self_attn.q_proj" in mg and mg["layers.0.self_attn.q_proj"].shape == (24, 256)
    with pytest.raises(FileNotFoundError, match="not a gradient index"):
        bergson_rs.load_gradients(FIXTURES)
