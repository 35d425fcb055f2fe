"""The extension runs on this process's libtorch (one copy) and refuses other torch releases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

import bergson_rs


def mapped(libname: str) -> set[str]:
    paths = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and Path(parts[5]).name == libname:
            paths.add(str(Path(parts[5]).resolve()))
    return paths


def test_one_libtorch_the_processes_own():
    assert bergson_rs.__version__
    torch_lib = (Path(torch.__file__).parent / "lib").resolve()
    for lib in ("libtorch_cpu.so", "libc10.so"):
        paths = mapped(lib)
        assert paths == {str(torch_lib / lib)}, f"{lib} mapped from {paths}"


def test_tensors_cross_without_copies(tmp_path):
    """The engine holds the caller's tensor, not a copy: an in-place edit after the forward
    hook handed it over shows in the rows (no projection keeps the input as it is)."""
    from bergson_rs._core import Collector

    c = Collector([("m", 4, 3, False)], "float32", "float32")
    x = torch.arange(24, dtype=torch.float32).view(2, 3, 4)
    c.record_input("m", x)
    x.mul_(2)
    g = torch.ones(2, 3, 3)
    c.record_grad("m", g)
    (name, rows), = c.take()
    # Full gradient (no projection): row n is Σ_s g[n,s] ⊗ x[n,s], with the edited x.
    want = torch.einsum("nso,nsi->noi", g, x).reshape(2, -1)
    assert name == "m" and torch.equal(rows, want)


def test_refuses_other_torch(tmp_path):
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("__version__ = '2.15.0'\n")
    pkg = Path(bergson_rs.__file__).parent.parent
    proc = subprocess.run(
        [sys.executable, "-c", "import bergson_rs"],
        env={"PYTHONPATH": f"{tmp_path}:{pkg}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "bergson_rs needs torch 2.11.*" in last and "2.15.0" in last, proc.stderr


def test_engine_draws_nothing_from_torch_generators():
    """Projection matrices come from the engine's own Philox stream, never torch's."""
    from bergson_rs._core import Collector

    weight, bias = torch.rand(6, 8) + 0.1, torch.rand(6) + 0.1
    before = torch.get_rng_state()
    c = Collector([("m", 8, 6, True)], "float32", "float32", "cpu", 4, True)
    c.set_normalizers([("m", "adam", [weight, bias])])
    c.record_input("m", torch.ones(2, 3, 8))
    c.record_grad("m", torch.ones(2, 3, 6))
    (_, rows), = c.take()
    assert rows.shape == (2, 16)
    assert torch.equal(torch.get_rng_state(), before)
