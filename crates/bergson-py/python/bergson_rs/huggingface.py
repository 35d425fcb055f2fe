"""Bergson 2.5.1's Hugging Face Trainer integration (``bergson.huggingface``) on the bergson-rs
engine: ``GradientCollectorCallback`` writes every training example's projected gradient,
per epoch, while the Trainer trains; ``prepare_for_gradient_collection`` exposes the dataset
rows to it.

By default (``bergson_compat=True``) the files equal Bergson 2.5.1's, quirks included:

* normalizers are rebuilt in ``on_step_end``, after the scheduler stepped: step 1's rows are
  unnormalised, later rows use the previous step's second moments divided by the current
  learning rate squared (``scale_by_lr``), and the processor saved at an epoch's end holds
  the normalizers for a step that follows it (under a linear schedule that decays to 0 the
  last epoch's normalizers are ``+inf``);
* ``order.hf`` labels each step's rows with ``int(state.epoch)`` after the step, so an
  epoch's last step is listed under the next epoch;
* with ``accumulate_grads`` later epochs overwrite the rows (not a sum);
* rows are clamped to the model dtype's finite range, then rounded to ``dtype``.

``bergson_compat=False`` does the sound thing for the last three: each epoch saves the
normalizers its last step used, ``order.hf`` gives the epoch the row was trained in, and
``accumulate_grads`` sums the epochs' rows.
"""

from __future__ import annotations

import os
from functools import wraps
from pathlib import Path
from typing import Sized

import numpy as np
import torch
from torch import Tensor

from ._core import IndexWriter, write_order
from .hooks import AttentionConfig, ModuleHooks, make_collector, weight_transposed

try:
    from transformers.trainer_callback import TrainerCallback
except ImportError:  # pragma: no cover - transformers is an optional dependency
    TrainerCallback = object  # type: ignore[misc,assignment]


def _dtype_name(dtype) -> str:
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    return np.dtype(dtype).name


class GradientCollectorCallback(TrainerCallback):
    """Collects per-example gradients during HF ``Trainer`` training (Bergson 2.5.1's
    callback, same parameters and defaults; ``path`` may be a ``str``).

    Args:
        path: Where to write ``train/epoch_<e>/`` (or ``train/`` with ``accumulate_grads``)
            and ``order.hf``.
        attention_cfgs: Modules whose output features are split into heads.
        projection_dim: The dimension gradients are projected onto (0: no projection).
        include_bias: Append bias gradients of modules that have a bias.
        dtype: The dtype of the on-disk gradient store.
        accumulate_grads: One index for all epochs instead of one per epoch.
        use_optimizer_state: Normalise gradients by the optimizer's second moments.
        scale_by_lr: Store ``lr * g / sqrt(v)``, the update the optimizer applied.
        track_order: Record the shuffled order of training rows in ``order.hf``.
        bergson_compat: Reproduce Bergson 2.5.1's files exactly (see the module docs).
    """

    def __init__(
        self,
        path: Path | str,
        attention_cfgs: dict[str, AttentionConfig] = {},
        projection_dim: int = 16,
        include_bias: bool = False,
        dtype: np.dtype = np.dtype(np.float16),
        accumulate_grads: bool = False,
        use_optimizer_state: bool = True,
        scale_by_lr: bool = True,
        track_order: bool = False,
        bergson_compat: bool = True,
    ):
        super().__init__()
        self.path = Path(path)
        self.attention_cfgs = dict(attention_cfgs)
        self.projection_dim = projection_dim
        self.include_bias = include_bias
        self.dtype = np.dtype(dtype)
        self.accumulate_grads = accumulate_grads
        self.use_optimizer_state = use_optimizer_state
        self.scale_by_lr = scale_by_lr
        self.bergson_compat = bergson_compat
        self.order: list[tuple[int, int, int]] | None = [] if track_order else None

        self.collector = None
        self.hooks: ModuleHooks | None = None
        self.writer: IndexWriter | None = None
        self.batch_indices: Tensor | None = None
        self._epoch_of_batch = 0
        self._accumulated: np.ndarray | None = None
        self._step_normalizers: list = []
        self._normalizers: list = []

    # -- set-up ----------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, *, model: torch.nn.Module, **kwargs):
        if not hasattr(args, "__gradient_collection_enabled__"):
            raise RuntimeError(
                "Gradient collection is not enabled. Please enable it by calling "
                "bergson_rs.prepare_for_gradient_collection on the trainer."
            )
        if type(model).__name__.startswith("Peft"):
            raise ValueError(
                "bergson_rs's callback does not collect PEFT models yet; use Python Bergson's "
                "callback for adapters, or train the base model"
            )
        base = getattr(model, "base_model", model)
        self.base = base
        self.collector, self.targets = make_collector(
            base,
            include_bias=self.include_bias,
            projection_dim=self.projection_dim or None,
            attention_cfgs=self.attention_cfgs,
        )
        self.grad_sizes = self.collector.grad_sizes()
        self.hooks = ModuleHooks(base, self.collector, self.targets)
        self.fwd_handle = model.register_forward_pre_hook(self._on_forward_begin, with_kwargs=True)

    def on_epoch_begin(self, args, state, control, *, train_dataloader=None, **kwargs):
        epoch = int(state.epoch or 0)
        self._epoch_of_batch = epoch
        if self.accumulate_grads and epoch > 0:
            return
        ds = getattr(train_dataloader, "dataset", None)
        if not isinstance(ds, Sized):
            raise ValueError("Dataset must be sized for gradient collection")
        suffix = "train" if self.accumulate_grads else f"train/epoch_{epoch}"
        self.writer = IndexWriter(
            str(self.path / suffix), len(ds), self.grad_sizes, _dtype_name(self.dtype)
        )
        if self.accumulate_grads and not self.bergson_compat:
            width = sum(size for _, size in self.grad_sizes)
            self._accumulated = np.zeros((len(ds), width), dtype=np.float64)

    def _on_forward_begin(self, module, args, kwargs: dict):
        # Always pop _idx so it never reaches the model.
        idx = kwargs.pop("_idx", None)
        if module.training and idx is not None:
            self.batch_indices = idx.to("cpu")
        return args, kwargs

    # -- every micro-batch -----------------------------------------------------------------

    def _write_grads(self):
        assert self.collector is not None
        if not self.collector.pending():
            return
        blocks = self.collector.take()
        if self.writer is None or self.batch_indices is None:
            return
        idx = self.batch_indices.tolist()
        if self._accumulated is not None:
            rows = torch.cat([t for _, t in blocks], dim=1).double().numpy()
            self._accumulated[idx] += rows
            total = torch.from_numpy(self._accumulated[idx])
            blocks, lo = [], 0
            for name, size in self.grad_sizes:
                blocks.append((name, total[:, lo : lo + size]))
                lo += size
        self.writer.write(idx, blocks)

    def on_substep_end(self, args, state, control, **kwargs):
        """The end of a micro-batch that did not finish its step."""
        self._write_grads()

    def on_step_end(self, args, state, control, *, model, optimizer, **kwargs):
        self._write_grads()
        if self.order is not None:
            assert self.batch_indices is not None, "batch indices are missing"
            epoch = int(state.epoch or 0) if self.bergson_compat else self._epoch_of_batch
            self.order.extend(
                (int(i), state.global_step, epoch) for i in self.batch_indices.tolist()
            )
        if not self.use_optimizer_state:
            return
        self._step_normalizers = self._normalizers
        self._normalizers = self._read_normalizers(model, optimizer)
        self.collector.set_normalizers(self._normalizers)

    def _read_normalizers(self, model, optimizer) -> list:
        """Bergson's normalizers from the optimizer's second moments: Adam's ``exp_avg_sq``,
        or Adafactor's ``exp_avg_sq_row``/``_col``, oriented ``[out, in]`` and divided by the
        parameter group's current learning rate squared with ``scale_by_lr``."""
        base = getattr(model, "base_model", model)
        param_to_name = {p: n for n, p in base.named_parameters() if p.requires_grad}
        moments: dict[str, dict] = {}
        for group in optimizer.param_groups:
            for param in group["params"]:
                name = param_to_name.get(param)
                if name is None:
                    continue
                if name.endswith(".weight"):
                    kind, layer = "weight", name.removesuffix(".weight")
                elif name.endswith(".bias"):
                    kind, layer = "bias", name.removesuffix(".bias")
                else:
                    continue
                if layer not in self.targets:
                    continue
                st = optimizer.state[param]
                entry = moments.setdefault(layer, {"lr": group["lr"]})
                if (row := st.get("exp_avg_sq_row")) is not None:
                    if kind == "weight":
                        entry["row"], entry["col"] = row, st.get("exp_avg_sq_col")
                    elif (b := st.get("exp_avg_sq")) is not None:
                        entry["bias"] = b
                elif (v := st.get("exp_avg_sq")) is not None:
                    entry[kind] = v
        out = []
        for layer, m in moments.items():
            scale = m["lr"] ** 2 if self.scale_by_lr else 1.0
            module = base.get_submodule(layer)
            out_f, in_f, _ = self.targets[layer]
            bias = m.get("bias")
            bias = bias / scale if bias is not None else None
            if "weight" in m:
                v = m["weight"]
                if weight_transposed(module) and tuple(v.shape) == (in_f, out_f):
                    v = v.T
                out.append((layer, "adam", [v / scale, bias]))
            elif "row" in m and "col" in m:
                row, col = m["row"], m["col"]
                if weight_transposed(module):
                    row, col = col, row
                out.append((layer, "adafactor", [row / scale, col / scale, bias]))
        return out

    # -- the end of an epoch and of training -----------------------------------------------

    def on_epoch_end(self, args, state, control, **kwargs):
        epoch = int(state.epoch or 0) - 1
        suffix = "train" if self.accumulate_grads else f"train/epoch_{epoch}"
        assert self.collector is not None
        if not self.bergson_compat and self.use_optimizer_state:
            # The normalizers the epoch's last step used, not the next step's.
            current = self._normalizers
            self.collector.set_normalizers(self._step_normalizers)
            self.collector.save_processor(str(self.path / suffix))
            self.collector.set_normalizers(current)
        else:
            self.collector.save_processor(str(self.path / suffix))
        if self.writer is not None:
            self.writer.flush()

    def on_train_end(self, args, state, control, **kwargs):
        if self.hooks is not None:
            self.hooks.remove()
        self.fwd_handle.remove()
        if self.writer is not None:
            self.writer.flush()
        if self.order is not None:
            os.makedirs(self.path, exist_ok=True)
            idx, steps, epochs = (list(c) for c in zip(*self.order)) if self.order else ([], [], [])
            write_order(str(self.path / "order.hf"), idx, steps, epochs)


def prepare_for_gradient_collection(trainer):
    """Adds an ``_idx`` column to the trainer's datasets and passes it through the collator,
    so the callback knows each row's dataset index (Bergson's function of the same name)."""

    def with_idx(ds):
        return ds.map(lambda ex, idx: {"_idx": idx}, with_indices=True)

    trainer.train_dataset = with_idx(trainer.train_dataset)
    if trainer.eval_dataset is not None:
        if isinstance(trainer.eval_dataset, dict):
            for name, ds in trainer.eval_dataset.items():
                trainer.eval_dataset[name] = with_idx(ds)
        else:
            trainer.eval_dataset = with_idx(trainer.eval_dataset)

    trainer._set_signature_columns_if_needed()
    trainer._signature_columns.append("_idx")

    if trainer.data_collator:
        original = trainer.data_collator

        @wraps(original)
        def collator(features):
            batch = original(features)
            batch.setdefault("_idx", torch.tensor([f["_idx"] for f in features]))
            return batch

        trainer.data_collator = collator

    trainer.args.__gradient_collection_enabled__ = True
    return trainer


# Bergson 2.5.1's error message names this function; it never existed there.
prepare_gradient_collection = prepare_for_gradient_collection

__all__ = [
    "GradientCollectorCallback",
    "prepare_for_gradient_collection",
    "prepare_gradient_collection",
]
