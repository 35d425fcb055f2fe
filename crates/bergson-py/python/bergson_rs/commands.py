"""``build`` and ``score`` as functions: the ``bergson`` CLI's commands, run in this process
by the engine, with its config fields (the CLI's flag names) as keyword arguments."""

from __future__ import annotations

import json
from os import PathLike

from . import _core


def _argv(run_path: str | PathLike, cfg: dict) -> list[str]:
    argv = [str(run_path)]
    for key, value in cfg.items():
        if value is None:
            continue
        flag = f"--{key}"
        if isinstance(value, bool):
            argv += [flag, "true" if value else "false"]
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        else:
            argv += [flag, str(value)]
    return argv


def build(run_path: str | PathLike, *, device: str = "cpu", quiet: bool = True, **cfg) -> str:
    """Builds a gradient index at ``run_path`` (``bergson build``): keyword arguments are its
    flags (``model=``, ``dataset=``, ``projection_dim=``, ``split=``, ...). Returns the summary
    line. Raises ``ValueError`` naming a bad flag or value."""
    return _core.build(_argv(run_path, cfg), device, quiet)


def score(run_path: str | PathLike, *, device: str = "cpu", quiet: bool = True, **cfg) -> str:
    """Scores a dataset against query gradients into ``run_path`` (``bergson score``): keyword
    arguments are its flags (``query_path=``, ``model=``, ``dataset=``, ``score=``, ...)."""
    return _core.score(_argv(run_path, cfg), device, quiet)
