"""Make the throughput benchmark's workload: a random pythia-14m-shaped GPT-NeoX and generated text.

    python benches/make_workload.py OUT_DIR [--docs N] [--seed S] [--arch neox|llama]

Writes OUT_DIR/model/ (config.json, model.safetensors, tokenizer files copied from
tests/fixtures/tokenizers/bpe) and OUT_DIR/data.jsonl (column `text`). Deterministic for a seed.
The model: GPT-NeoX, 6 layers, hidden 128, 4 heads, intermediate 512, vocab 50304 (pythia-14m's
shape); `--arch llama` gives a Llama of similar size (6 layers, hidden 128, 4 heads / 2 KV heads,
intermediate 352, vocab 32000).
"""
import argparse
import json
import os
import random
import shutil

import torch

WORDS = (
    "the of and to in is was for on that with as by it at from his an were are which this be "
    "or has had not first one their its new after who they have her she two been other when "
    "there all during into school time may years more most only over city some world would "
    "where later up such used many can state about national out known university united then "
    "made capital river village century people house game season team music film war"
).split()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--docs", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", choices=["neox", "llama"], default="neox")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model_dir = os.path.join(args.out, "model")
    os.makedirs(model_dir, exist_ok=True)
    if args.arch == "neox":
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        cfg = GPTNeoXConfig(
            vocab_size=50304, hidden_size=128, num_hidden_layers=6, num_attention_heads=4,
            intermediate_size=512, max_position_embeddings=2048, rotary_pct=0.25,
        )
        model = GPTNeoXForCausalLM(cfg)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(
            vocab_size=32000, hidden_size=128, num_hidden_layers=6, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=352, max_position_embeddings=2048,
        )
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(model_dir)
    here = os.path.dirname(os.path.abspath(__file__))
    tok = os.path.join(here, "..", "tests", "fixtures", "tokenizers", "bpe")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok, f), os.path.join(model_dir, f))
    with open(os.path.join(args.out, "data.jsonl"), "w") as f:
        for _ in range(args.docs):
            n = int(rng.lognormvariate(4.5, 0.6))
            n = max(4, min(n, 400))
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(n))}) + "\n")


if __name__ == "__main__":
    main()
