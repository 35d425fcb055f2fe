"""Training time with no callback, bergson_rs's GradientCollectorCallback and (when installed)
Python Bergson 2.5.1's, side by side in one process, on a pythia-14m-shaped GPT-NeoX (random
weights) at several dataset sizes. Prints a markdown table (docs/python.md).

    python crates/bergson-py/bench/callback_overhead.py [--rows 64 128 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import (
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

import bergson_rs

SEQ, VOCAB = 128, 50304


def model():
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=6,
        num_attention_heads=4,
        max_position_embeddings=2048,
    )
    return GPTNeoXForCausalLM(cfg)


def run(rows: int, tool: str) -> float:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, size=(rows, SEQ)).tolist()
    ds = Dataset.from_dict({"input_ids": ids, "labels": ids})
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=8,
            num_train_epochs=1,
            learning_rate=1e-4,
            seed=0,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
        )
        callbacks, prepare = [], None
        if tool == "bergson_rs":
            callbacks = [bergson_rs.GradientCollectorCallback(Path(tmp) / "g")]
            prepare = bergson_rs.prepare_for_gradient_collection
        elif tool == "bergson":
            from bergson.huggingface import (
                GradientCollectorCallback,
                prepare_for_gradient_collection,
            )

            callbacks = [GradientCollectorCallback(Path(tmp) / "g")]
            prepare = prepare_for_gradient_collection
        trainer = Trainer(
            model=model(),
            args=args,
            train_dataset=ds,
            data_collator=default_data_collator,
            callbacks=callbacks,
        )
        if prepare:
            prepare(trainer)
        start = time.perf_counter()
        trainer.train()
        return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tools = ["none", "bergson_rs"]
    if importlib.util.find_spec("bergson"):
        tools.append("bergson")
    run(16, "none")  # warm-up
    print("| rows | " + " | ".join(f"{t} (s)" for t in tools) + " | overhead ours | overhead 2.5.1 |")
    print("|---" * (len(tools) + 3) + "|")
    for rows in a.rows:
        t = {tool: run(rows, tool) for tool in tools}
        ours = t["bergson_rs"] - t["none"]
        theirs = t["bergson"] - t["none"] if "bergson" in t else float("nan")
        cells = " | ".join(f"{t[x]:.2f}" for x in tools)
        print(f"| {rows} | {cells} | {ours:.2f} s | {theirs:.2f} s |", flush=True)


if __name__ == "__main__":
    main()
