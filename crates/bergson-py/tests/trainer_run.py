"""A real HF Trainer run on a tiny model, shared by the tests and by make_fixtures.py (which
records Python Bergson 2.5.1's callback output for the same runs)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

# name -> (model, optimizer, callback kwargs, trainer kwargs)
CASES: dict[str, dict] = {
    "llama_adamw": dict(
        model="llama",
        optim="adamw_torch",
        callback=dict(projection_dim=16, track_order=True),
        epochs=2,
        accum=2,
        schedule="linear",
    ),
    "gpt2_bias_accumulate": dict(
        model="gpt2",
        optim="adamw_torch",
        callback=dict(projection_dim=8, include_bias=True, accumulate_grads=True, track_order=True),
        epochs=2,
        accum=1,
        schedule="constant",
    ),
    "llama_adafactor_full": dict(
        model="llama",
        optim="adafactor",
        callback=dict(projection_dim=0, dtype=np.dtype(np.float32)),
        epochs=1,
        accum=1,
        schedule="constant",
    ),
}

ROWS, SEQ, VOCAB = 24, 12, 64


def tiny_model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "llama":
        cfg = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
        return LlamaForCausalLM(cfg)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return GPT2LMHeadModel(cfg)


def dataset() -> Dataset:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, size=(ROWS, SEQ)).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def train(case: str, out: Path, callback_factory=None, prepare=None) -> dict[str, torch.Tensor]:
    """Trains case `case`'s model with the callback `callback_factory(path, **kwargs)` (or none)
    writing under `out`; returns the trained weights."""
    spec = CASES[case]
    # One thread: the same reduction order in every process, so runs agree to the last bit.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = tiny_model(spec["model"])
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=spec["accum"],
        num_train_epochs=spec["epochs"],
        learning_rate=1e-2,
        lr_scheduler_type=spec["schedule"],
        optim=spec["optim"],
        seed=0,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    callbacks = []
    if callback_factory is not None:
        callbacks.append(callback_factory(out / "grads", **spec["callback"]))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset(),
        data_collator=default_data_collator,
        callbacks=callbacks,
    )
    if callback_factory is not None:
        prepare(trainer)
    trainer.train()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def query_rows() -> dict:
    """Two query documents for Attributor.trace."""
    rng = np.random.default_rng(1)
    ids = torch.tensor(rng.integers(0, VOCAB, size=(2, SEQ)))
    return {"input_ids": ids, "labels": ids}


def trained_llama() -> torch.nn.Module:
    """The tiny llama model of the traces (seeded initial weights)."""
    return tiny_model("llama").eval()
