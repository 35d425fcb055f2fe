#!/usr/bin/env python3
"""Ctrl-C latency of `bergson build` while it prepares data (docs/benchmarks.md, "Data
pipeline at scale"): starts a build on DATASET, sends SIGINT after each delay, and reports the
phase it interrupted (from the pipeline's info log), the time from the signal to exit, the exit
status and whether a finished index was left behind.

    scripts/bench-ctrl-c.py target/release/bergson DATASET 0.5 1.0 5
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = Path(__file__).resolve().parent.parent / "tests/fixtures/models/gpt_neox"


def main() -> None:
    binary, dataset, *delays = sys.argv[1:]
    print("| signal after s | phase interrupted | exit after signal s | exit status | left in the output folder |")
    print("|---|---|---|---|---|")
    for delay in map(float, delays):
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            env = dict(os.environ, RUST_LOG="bergson=info")
            proc = subprocess.Popen(
                [binary, "build", str(run), "--model", str(MODEL), "--dataset", dataset,
                 "--quiet", "--max_tokens", "4096"],
                stderr=subprocess.PIPE, text=True, env=env,
            )
            time.sleep(delay)
            proc.send_signal(signal.SIGINT)
            sent = time.monotonic()
            _, err = proc.communicate()
            latency = time.monotonic() - sent
            phase = ("tokenising" if "INFO read" in err else "reading") if "INFO tokenised" not in err else "after data"
            left = ", ".join(sorted(p.name for p in Path(tmp).iterdir())) or "nothing"
            print(f"| {delay} | {phase} | {latency:.3f} | {proc.returncode} | {left} |")


if __name__ == "__main__":
    main()
