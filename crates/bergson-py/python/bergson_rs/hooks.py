"""Torch hooks that feed a model's module inputs and output gradients to the engine's
collector (``bergson_rs._core.Collector``), as Bergson's ``HookCollectorBase`` registers
them: a forward hook and a full backward hook on every collected module."""

from __future__ import annotations

from dataclasses import astuple, dataclass

import torch
from torch import nn

from ._core import Collector


@dataclass
class AttentionConfig:
    """How a module's output features split into heads (Bergson's ``AttentionConfig``)."""

    num_heads: int = 0
    head_size: int = 0
    head_dim: int = 2


def _conv1d_type():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional
        return None
    return Conv1D


def module_shape(layer: nn.Module) -> tuple[int, int] | None:
    """``(out, in)`` features of a supported module (``nn.Linear``, HF ``Conv1D``)."""
    if isinstance(layer, nn.Linear):
        return layer.out_features, layer.in_features
    conv1d = _conv1d_type()
    if conv1d is not None and isinstance(layer, conv1d):
        return layer.nf, layer.weight.shape[0]
    return None


def weight_transposed(layer: nn.Module) -> bool:
    """HF ``Conv1D`` stores its weight ``[in, out]``."""
    conv1d = _conv1d_type()
    return conv1d is not None and isinstance(layer, conv1d)


def discover_targets(
    model: nn.Module,
    target_modules: set[str] | None = None,
    include_bias: bool = False,
) -> dict[str, tuple[int, int, bool]]:
    """Bergson's ``discover_targets``: every supported module of ``model`` (or those named in
    ``target_modules``), in module order, as ``name -> (out, in, collect_bias)``."""
    found = {}
    for name, layer in model.named_modules():
        if isinstance(layer, nn.Conv1d):
            raise ValueError(
                f"{name} is an nn.Conv1d, which bergson_rs does not collect yet; "
                "leave it out with target_modules"
            )
        shape = module_shape(layer)
        if shape is None or (target_modules is not None and name not in target_modules):
            continue
        has_bias = getattr(layer, "bias", None) is not None
        found[name] = (shape[0], shape[1], has_bias and include_bias)
    if target_modules is not None and (missing := set(target_modules) - set(found)):
        raise ValueError(
            f"target modules {sorted(missing)} are not nn.Linear/Conv1D modules of the model"
        )
    if not found:
        raise ValueError("the model has no nn.Linear or Conv1D module to collect")
    return found


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype the model computes in (Bergson's ``get_gradient_dtype``)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def make_collector(
    model: nn.Module,
    *,
    target_modules: set[str] | None = None,
    include_bias: bool = False,
    projection_dim: int | None = None,
    attention_cfgs: dict[str, AttentionConfig] | None = None,
    index_path: str | None = None,
    save_dtype: torch.dtype | None = None,
) -> tuple[Collector, dict[str, tuple[int, int, bool]]]:
    """An engine collector for ``model``'s modules and the targets it covers."""
    # The engine collects a bias when the module has one and the settings (the index's, with
    # index_path) include biases.
    targets = discover_targets(model, target_modules, include_bias=True)
    dtype = model_dtype(model)
    device = next(model.parameters()).device
    dev = "cpu" if device.type == "cpu" else f"cuda:{device.index or 0}"
    collector = Collector(
        [(name, i, o, bias) for name, (o, i, bias) in targets.items()],
        _dtype_name(dtype),
        _dtype_name(save_dtype or dtype),
        dev,
        projection_dim,
        include_bias,
        {name: astuple(cfg) for name, cfg in (attention_cfgs or {}).items()},
        index_path,
    )
    return collector, targets


class ModuleHooks:
    """Registers the forward and full backward hooks that feed ``collector`` (a context
    manager; ``remove`` takes them off)."""

    def __init__(self, model: nn.Module, collector: Collector, names):
        self.collector = collector
        self.handles = []
        for name in names:
            layer = model.get_submodule(name)
            self.handles.append(layer.register_forward_hook(self._forward(name)))
            self.handles.append(layer.register_full_backward_hook(self._backward(name)))

    def _forward(self, name: str):
        def hook(module, inp, out):
            # Only passes that will be differentiated carry gradients (not evaluation).
            if torch.is_grad_enabled():
                self.collector.record_input(name, inp[0].detach())

        return hook

    def _backward(self, name: str):
        def hook(module, grad_in, grad_out):
            self.collector.record_grad(name, grad_out[0].detach())

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False
