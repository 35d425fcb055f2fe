"""Readers of index and score files (Bergson 2.5.1's ``bergson.data`` readers): numpy
memory maps over ``gradients.bin`` and ``scores.bin``, for indexes and scores of either tool."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from numpy.lib.recfunctions import structured_to_unstructured


def column_offsets(grad_sizes: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Each module's ``(start, end)`` columns in the flat gradient array."""
    offsets, start = {}, 0
    for name, size in grad_sizes.items():
        offsets[name] = (start, start + size)
        start += size
    return offsets


def _info(root: Path) -> dict[str, Any]:
    path = root / "info.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{root} is not a gradient index (no info.json); pass the run path of a finished build"
        )
    with path.open() as f:
        return json.load(f)


def load_gradients(root_dir: Path | str) -> np.memmap:
    """The gradients in ``root_dir`` as a read-only ``(num_grads, total_dim)`` memory map,
    modules in ``grad_sizes`` order."""
    root = Path(root_dir)
    info = _info(root)
    if "base_dtype" in info:
        dtype = np.dtype(info["base_dtype"]) if info["base_dtype"] != "bfloat16" else _bf16()
    else:  # older stores: a structured dtype
        dtype = np.dtype(info["dtype"]["formats"][0]).base
    return np.memmap(
        root / "gradients.bin",
        dtype=dtype,
        mode="r",
        shape=(info["num_grads"], sum(info["grad_sizes"].values())),
    )


def _bf16():
    try:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    except ImportError as e:  # pragma: no cover
        raise ImportError("a bfloat16 index needs `pip install ml_dtypes` to be read") from e


class ModuleGradients:
    """A module-keyed view of a gradient memory map: ``grads[name]`` is that module's
    ``(num_grads, size)`` column slice."""

    def __init__(self, mmap: np.memmap, grad_sizes: dict[str, int]):
        self.mmap = mmap
        self.offsets = column_offsets(grad_sizes)

    def __getitem__(self, name: str) -> np.ndarray:
        lo, hi = self.offsets[name]
        return self.mmap[:, lo:hi]

    def __len__(self) -> int:
        return len(self.mmap)

    def __iter__(self) -> Iterator[str]:
        return iter(self.offsets)

    def __contains__(self, name: str) -> bool:
        return name in self.offsets

    def keys(self):
        return self.offsets.keys()


def load_module_gradients(root_dir: Path | str) -> ModuleGradients:
    """``load_gradients`` as a module-keyed view."""
    root = Path(root_dir)
    return ModuleGradients(load_gradients(root), _info(root)["grad_sizes"])


class Scores:
    """A score store (``scores.bin``: structured ``(score_i, written_i)`` rows); ``offsets``
    is set for per-token stores and ``candidates`` when only some rows were scored."""

    def __init__(self, mmap: np.memmap, info: dict[str, Any], offsets=None, candidates=None):
        self.mmap = mmap
        self.info = info
        self.offsets = offsets
        self.candidates = candidates
        self.num_scores = info["num_scores"]
        self._score_fields = [f"score_{i}" for i in range(self.num_scores)]

    def __len__(self) -> int:
        return self.info["num_items"]

    def __getitem__(self, key: Any) -> np.ndarray:
        return structured_to_unstructured(self.mmap[key][self._score_fields])

    def get(self, key: Any, score_idx: int = 0) -> np.ndarray:
        """Scores of one query."""
        return self.mmap[key][f"score_{score_idx}"]

    def is_written(self) -> bool:
        """Whether every cell has been written."""
        return all(np.all(self.mmap[f"written_{i}"]) for i in range(self.num_scores))


def load_scores(path: Path | str) -> Scores:
    """The score store at ``path`` (``bergson score`` output of either tool)."""
    path = Path(path)
    info_path = path / "info.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{path} is not a score store (no info.json)")
    with info_path.open() as f:
        info = json.load(f)
    mmap = np.memmap(path / "scores.bin", dtype=info["dtype"], mode="r", shape=(info["num_rows"],))
    offsets = np.load(path / "offsets.npy") if info.get("attribute_tokens") else None
    cand = path / "candidates.npy"
    return Scores(mmap, info, offsets, np.load(cand) if cand.exists() else None)
