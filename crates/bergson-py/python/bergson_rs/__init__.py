"""bergson-rs from Python: Bergson's HF Trainer callback, ``Attributor`` and readers, with
the capture, projection, writing and search done by the bergson-rs engine (Rust, on the
libtorch of this process's ``torch``).

The names, signatures, defaults and output files mirror Python Bergson 2.5.1, so switching
is one import: ``from bergson_rs import GradientCollectorCallback, Attributor``.
"""

import torch as _torch

_REQUIRED_TORCH = "2.11"
if not _torch.__version__.startswith(_REQUIRED_TORCH + "."):
    raise ImportError(
        f"bergson_rs needs torch {_REQUIRED_TORCH}.* (its engine links that libtorch), but "
        f"this Python has torch {_torch.__version__}; install it with "
        f"`pip install 'torch=={_REQUIRED_TORCH}.*'` in this environment"
    )

from ._core import __version__  # noqa: E402
from .attributor import Attributor, TraceResult  # noqa: E402
from .commands import build, score  # noqa: E402
from .data import (  # noqa: E402
    ModuleGradients,
    Scores,
    column_offsets,
    load_gradients,
    load_module_gradients,
    load_scores,
)
from .hooks import AttentionConfig, discover_targets  # noqa: E402
from .huggingface import (  # noqa: E402
    GradientCollectorCallback,
    prepare_for_gradient_collection,
    prepare_gradient_collection,
)

__all__ = [
    "__version__",
    "build",
    "score",
    "AttentionConfig",
    "Attributor",
    "GradientCollectorCallback",
    "ModuleGradients",
    "Scores",
    "TraceResult",
    "column_offsets",
    "discover_targets",
    "load_gradients",
    "load_module_gradients",
    "load_scores",
    "prepare_for_gradient_collection",
    "prepare_gradient_collection",
]
