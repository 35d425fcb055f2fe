"""Records Python Bergson 2.5.1's GradientCollectorCallback output for every case of
trainer_run.py into tests/fixtures/<case>/ (run in a venv with bergson==2.5.1 and torch 2.11):

    python crates/bergson-py/tests/make_fixtures.py
"""

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bergson.huggingface import (  # noqa: E402
    GradientCollectorCallback,
    prepare_for_gradient_collection,
)

from trainer_run import CASES, train  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"

for case in CASES:
    with tempfile.TemporaryDirectory() as tmp:
        train(case, Path(tmp), GradientCollectorCallback, prepare_for_gradient_collection)
        dest = FIXTURES / case
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(Path(tmp) / "grads", dest)
        print(case, "->", dest)

# Attributor.search and .trace on the llama_adamw epoch-0 index.
import torch  # noqa: E402
from bergson.data import column_offsets, load_gradients  # noqa: E402
from bergson.query.attributor import Attributor  # noqa: E402

from trainer_run import query_rows, trained_llama  # noqa: E402

index = FIXTURES / "llama_adamw" / "train" / "epoch_0"
grads = torch.from_numpy(load_gradients(index).astype("float32"))
import json  # noqa: E402

sizes = json.loads((index / "info.json").read_text())["grad_sizes"]
queries = {n: grads[[0, 5, 17], lo:hi].clone() for n, (lo, hi) in column_offsets(sizes).items()}
out = {"queries": {n: t.clone() for n, t in queries.items()}}


def fresh():
    # Bergson's unit-norm search divides the caller's query tensors in place: pass copies.
    return {n: t.clone() for n, t in queries.items()}


for unit in (False, True):
    att = Attributor(index, unit_norm=unit)
    top = att.search(fresh(), 5)
    out[f"search_{unit}"] = (top.values, top.indices)
    every = att.search(fresh(), None, reverse=True)
    out[f"search_all_reverse_{unit}"] = (every.values, every.indices)
    mods = {"layers.0.mlp.up_proj", "layers.1.self_attn.v_proj"}
    sub = att.search(fresh(), 4, modules=mods)
    out[f"search_modules_{unit}"] = (sub.values, sub.indices)
    model = trained_llama()
    with att.trace(model.model, 6) as result:
        model(**query_rows()).loss.backward()
    out[f"trace_{unit}"] = (result.scores, result.indices)
torch.save(out, FIXTURES / "attributor.pt")
print("attributor ->", FIXTURES / "attributor.pt")
