"""GradientCollectorCallback against Python Bergson 2.5.1's callback on a real HF Trainer run:
its committed output (fixtures/, made by make_fixtures.py) always, and a live run of Bergson's
callback when `bergson` is importable."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import bergson_rs  # noqa: E402
from trainer_run import CASES, train  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


def index_dirs(root: Path) -> list[Path]:
    return sorted(p.parent.relative_to(root) for p in root.rglob("info.json"))


def block_errors(ours: Path, theirs: Path) -> dict[str, float]:
    """Relative Frobenius error of every module block's rows."""
    a = bergson_rs.load_module_gradients(ours)
    b = bergson_rs.load_module_gradients(theirs)
    assert list(a.keys()) == list(b.keys())
    errs = {}
    for name in b.keys():
        x, y = np.asarray(a[name], np.float64), np.asarray(b[name], np.float64)
        finite = np.isfinite(y)
        assert (np.isfinite(x) == finite).all(), f"{name}: non-finite entries differ"
        scale = np.linalg.norm(y[finite]) or 1.0
        errs[name] = float(np.linalg.norm((x - y)[finite]) / scale)
    return errs


def compare_runs(ours: Path, theirs: Path, rtol: float = 1e-4):
    dirs = index_dirs(theirs)
    assert dirs and dirs == index_dirs(ours), f"indexes {index_dirs(ours)} vs {dirs}"
    for d in dirs:
        o, t = ours / d, theirs / d
        assert json.loads((o / "info.json").read_text()) == json.loads(
            (t / "info.json").read_text()
        )
        assert (o / "processor_config.yaml").read_text() == (
            t / "processor_config.yaml"
        ).read_text()
        errs = block_errors(o, t)
        worst = max(errs, key=errs.get)
        assert errs[worst] <= rtol, f"{d} {worst}: relative error {errs[worst]:.3g}"
        no = torch.load(o / "normalizers.pth", weights_only=False)
        nt = torch.load(t / "normalizers.pth", weights_only=False)
        assert list(no) == list(nt), f"{d}: normalizer modules differ"
        for name in nt:
            assert no[name]["__class__"] == nt[name]["__class__"]
            for key, v in nt[name].items():
                if isinstance(v, torch.Tensor):
                    torch.testing.assert_close(no[name][key].float(), v.float(), rtol=1e-5, atol=0)
    if (theirs / "order.hf").exists():
        from datasets import load_from_disk

        assert load_from_disk(str(ours / "order.hf")).to_dict() == load_from_disk(
            str(theirs / "order.hf")
        ).to_dict()
    else:
        assert not (ours / "order.hf").exists()


@pytest.mark.parametrize("case", list(CASES))
def test_callback_equals_bergson_fixture(case, tmp_path):
    train(
        case,
        tmp_path,
        bergson_rs.GradientCollectorCallback,
        bergson_rs.prepare_for_gradient_collection,
    )
    compare_runs(tmp_path / "grads", FIXTURES / case)


def test_comparison_can_fail(tmp_path):
    """The comparison notices a gradient that is off by 1e-3."""
    train(
        "llama_adamw",
        tmp_path,
        bergson_rs.GradientCollectorCallback,
        bergson_rs.prepare_for_gradient_collection,
    )
    bin_path = tmp_path / "grads" / "train" / "epoch_1" / "gradients.bin"
    g = np.memmap(bin_path, dtype=np.float16, mode="r+")
    g[:256] *= np.float16(1.01)
    g.flush()
    with pytest.raises(AssertionError, match="relative error"):
        compare_runs(tmp_path / "grads", FIXTURES / "llama_adamw")


def test_callback_leaves_training_unchanged(tmp_path):
    plain = train("llama_adamw", tmp_path / "plain")
    hooked = train(
        "llama_adamw",
        tmp_path / "hooked",
        bergson_rs.GradientCollectorCallback,
        bergson_rs.prepare_for_gradient_collection,
    )
    assert plain.keys() == hooked.keys()
    for k in plain:
        assert torch.equal(plain[k], hooked[k]), k


def test_str_path_and_alias(tmp_path):
    cb = bergson_rs.GradientCollectorCallback(str(tmp_path / "x"))
    assert cb.path == tmp_path / "x"
    assert bergson_rs.prepare_gradient_collection is bergson_rs.prepare_for_gradient_collection


def test_callback_needs_prepare(tmp_path):
    from transformers import Trainer, TrainingArguments

    from trainer_run import dataset, tiny_model

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=1)
    trainer = Trainer(
        model=tiny_model("llama"),
        args=args,
        train_dataset=dataset(),
        callbacks=[bergson_rs.GradientCollectorCallback(tmp_path / "g")],
    )
    with pytest.raises(RuntimeError, match="prepare_for_gradient_collection"):
        trainer.train()


def test_sound_mode_differs_where_documented(tmp_path):
    """bergson_compat=False labels each row with the epoch it was trained in."""

    def factory(path, **kw):
        return bergson_rs.GradientCollectorCallback(path, bergson_compat=False, **kw)

    train("llama_adamw", tmp_path, factory, bergson_rs.prepare_for_gradient_collection)
    from datasets import load_from_disk

    order = load_from_disk(str(tmp_path / "grads" / "order.hf")).to_dict()
    # Each step lists its last micro-batch (4 rows); steps 1-3 train epoch 0, 4-6 epoch 1.
    assert order["global_step"] == [s for s in range(1, 7) for _ in range(4)]
    assert order["epoch"] == [0] * 12 + [1] * 12
    # Bergson's file puts each epoch's last step under the next epoch.
    theirs = load_from_disk(str(FIXTURES / "llama_adamw" / "order.hf")).to_dict()
    assert theirs["epoch"] != order["epoch"]


def test_sound_mode_saves_the_normalizers_in_use(tmp_path):
    """2.5.1 saves the normalizers of the step after the epoch: +inf at the end of a linear
    schedule. bergson_compat=False saves those the epoch's last step used (finite)."""

    def factory(path, **kw):
        return bergson_rs.GradientCollectorCallback(path, bergson_compat=False, **kw)

    train("llama_adamw", tmp_path, factory, bergson_rs.prepare_for_gradient_collection)
    name = "layers.0.self_attn.q_proj"
    theirs = torch.load(FIXTURES / "llama_adamw/train/epoch_1/normalizers.pth", weights_only=False)
    ours = torch.load(tmp_path / "grads/train/epoch_1/normalizers.pth", weights_only=False)
    assert torch.isinf(theirs[name]["weight_avg_sq"]).all()
    assert torch.isfinite(ours[name]["weight_avg_sq"]).all()
    # The rows themselves are 2.5.1's.
    errs = block_errors(tmp_path / "grads/train/epoch_1", FIXTURES / "llama_adamw/train/epoch_1")
    assert max(errs.values()) == 0.0


def test_sound_mode_accumulates_a_sum(tmp_path):
    """accumulate_grads with bergson_compat=False holds the sum of the per-epoch rows."""

    def summed(path, **kw):
        return bergson_rs.GradientCollectorCallback(path, bergson_compat=False, **kw)

    def per_epoch(path, **kw):
        return bergson_rs.GradientCollectorCallback(path, **dict(kw, accumulate_grads=False))

    prep = bergson_rs.prepare_for_gradient_collection
    train("gpt2_bias_accumulate", tmp_path / "sum", summed, prep)
    train("gpt2_bias_accumulate", tmp_path / "each", per_epoch, prep)
    total = np.asarray(bergson_rs.load_gradients(tmp_path / "sum/grads/train"), np.float64)
    parts = sum(
        np.asarray(bergson_rs.load_gradients(tmp_path / f"each/grads/train/epoch_{e}"), np.float64)
        for e in (0, 1)
    )
    err = np.linalg.norm(total - parts) / np.linalg.norm(parts)
    assert err < 2e-3, err  # float16 rounding of the parts
    last = np.asarray(bergson_rs.load_gradients(tmp_path / "each/grads/train/epoch_1"), np.float64)
    assert np.linalg.norm(total - last) / np.linalg.norm(parts) > 0.1


@pytest.mark.skipif(
    importlib.util.find_spec("bergson") is None,
    reason="Python Bergson 2.5.1 is not installed (scripts/test-python.sh --with-bergson)",
)
@pytest.mark.parametrize("case", list(CASES))
def test_callback_equals_live_bergson(case, tmp_path):
    from bergson.huggingface import GradientCollectorCallback, prepare_for_gradient_collection

    train(case, tmp_path / "theirs", GradientCollectorCallback, prepare_for_gradient_collection)
    train(
        case,
        tmp_path / "ours",
        bergson_rs.GradientCollectorCallback,
        bergson_rs.prepare_for_gradient_collection,
    )
    compare_runs(tmp_path / "ours" / "grads", tmp_path / "theirs" / "grads")
