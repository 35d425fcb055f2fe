"""Bergson 2.5.1's ``Attributor`` (``bergson.query.attributor``) on the bergson-rs engine:
exact search of a gradient index written by either tool, and ``trace``, which collects a
module's query gradients in the index's space while the caller runs a backward pass."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Generator

import torch
from torch import Tensor, nn

from . import _core
from .hooks import ModuleHooks, make_collector


class TraceResult:
    """Result of a ``.trace()`` call, filled in when the context exits."""

    def __init__(self):
        self._indices: Tensor | None = None
        self._scores: Tensor | None = None

    @property
    def indices(self) -> Tensor:
        """The indices of the top-k examples."""
        if self._indices is None:
            raise ValueError("No indices available. Exit the context manager first.")
        return self._indices

    @property
    def scores(self) -> Tensor:
        """The attribution scores of the top-k examples."""
        if self._scores is None:
            raise ValueError("No scores available. Exit the context manager first.")
        return self._scores


class Attributor:
    """Searches a gradient index (Bergson's ``Attributor``; same arguments).

    Args:
        index_path: The index (a ``bergson build`` run path, either tool's).
        device: Where results are returned (the engine searches on the CPU).
        dtype: The dtype of the returned scores.
        unit_norm: Cosine similarity instead of inner products.
        faiss_cfg: Not supported by this package (use ``bergson query --faiss``).
        inversion_cfg: Not supported (the default inversion is used).
        hessian_path: A Hessian to precondition with (one-sided, two-sided with unit_norm).
        ev_correction: Use EK-FAC's corrected eigenvalues.
    """

    def __init__(
        self,
        index_path: str | Path,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        unit_norm: bool = False,
        faiss_cfg=None,
        inversion_cfg=None,
        hessian_path: str | Path | None = None,
        ev_correction: bool = False,
    ):
        if faiss_cfg is not None:
            raise NotImplementedError(
                "faiss_cfg is not supported by bergson_rs.Attributor; use `bergson query --faiss`"
            )
        if inversion_cfg is not None:
            raise NotImplementedError(
                "inversion_cfg is not supported by bergson_rs.Attributor; omit it for the default"
            )
        self.index_path = str(index_path)
        self.device = device
        self.dtype = dtype
        self.unit_norm = unit_norm
        self._inner = _core.Attributor(
            self.index_path,
            unit_norm,
            None if hessian_path is None else str(hessian_path),
            ev_correction,
        )
        self.ordered_modules = self._inner.modules()
        with open(Path(self.index_path) / "info.json") as f:
            self.grad_sizes: dict[str, int] = json.load(f)["grad_sizes"]
        self.N = self._inner.num_rows()
        if hessian_path is None:
            self.precondition = "none"
        else:
            self.precondition = "two-sided" if unit_norm else "one-sided"

    def search(
        self,
        queries: dict[str, Tensor],
        k: int | None,
        modules: set[str] | None = None,
        reverse: bool = False,
    ):
        """The ``k`` best rows of the index (all with ``k=None``) for each query: returns
        ``torch.return_types.topk``-like ``(values, indices)``, each ``[Q, k]``.

        Args:
            queries: Each module's ``[Q, size]`` query gradients.
            k: How many rows per query; ``None`` for all.
            modules: Score with these modules only.
            reverse: The lowest scores instead of the highest.
        """
        missing = [m for m in self.ordered_modules if m not in queries]
        if missing:
            raise KeyError(f"queries lack the index's modules {missing}")
        q = [(name, queries[name].detach().to("cpu")) for name in self.ordered_modules]
        if k is not None and k < 1:
            raise ValueError("k must be at least 1 (or None for every row)")
        selected = None
        if modules:
            selected = [name for name in self.ordered_modules if name in modules]
        scores, indices = self._inner.search(q, k, selected, reverse)
        return torch.return_types.topk(
            (scores.to(self.device, self.dtype), indices.to(self.device))
        )

    @contextmanager
    def trace(
        self,
        module: nn.Module,
        k: int | None,
        *,
        modules: set[str] | None = None,
        reverse: bool = False,
    ) -> Generator[TraceResult, None, None]:
        """Collects the query gradients of ``module`` while the body runs a forward and a
        backward pass, then searches the index with them.

        Args:
            module: The model to trace (module names relative to it must match the index's).
            k: The number of rows to return.
            modules: The modules to trace (default: all the index has).
            reverse: The lowest scores instead of the highest.
        """
        result = TraceResult()
        wanted = set(modules) if modules else None
        targets = {
            name
            for name in _module_names(module)
            if (wanted is None or name in wanted)
            and any(m == name or m.startswith(name + ".head_") for m in self.ordered_modules)
        }
        if not targets:
            raise ValueError(
                f"no module of the traced model is in the index (its modules: "
                f"{self.ordered_modules[:4]}...); pass the model the index was built on "
                "(its base model: names are relative to it)"
            )
        collector, found = make_collector(module, target_modules=targets, index_path=self.index_path)
        grads: dict[str, list[Tensor]] = {}
        with ModuleHooks(module, collector, found):
            yield result
            if collector.pending():
                for name, g in collector.take():
                    grads.setdefault(name, []).append(g.float())
        if not grads:
            raise ValueError("No grads collected. Did you forget to call backward?")
        queries = {name: torch.cat(g, dim=0) for name, g in grads.items()}
        if any(q.isnan().any() for q in queries.values()):
            raise ValueError("NaN found in queries.")
        rows = next(iter(queries.values())).shape[0]
        covered = set(queries)
        # Modules the trace did not reach score nothing (zero query blocks, left out).
        full = {
            name: queries.get(name, torch.zeros(rows, self.grad_sizes[name]))
            for name in self.ordered_modules
        }
        restrict = covered if (modules or covered != set(self.ordered_modules)) else None
        res = self.search(full, k, restrict, reverse)
        result._scores, result._indices = res.values, res.indices


def _module_names(module: nn.Module) -> list[str]:
    return [name for name, _ in module.named_modules() if name]
