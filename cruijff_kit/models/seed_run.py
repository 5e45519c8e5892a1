"""The seed's own configuration on the random-init Llama-3.2-1B, for the slow smoke test and bench/gpu_seed.py.

Both design the check with `--preset seed` (a few flags overridden), scaffold it, run it, and read the
timings back from each run's logs/metrics.jsonl:

    exp_dir = design_and_scaffold(scratch, models_dir, data_dir, "smoke", gpus=0, steps=3, N=200, val_size=4, ...)
    timing = run_timing(read_metrics(output_dir))     # train steps/s, tokens/s, validation share
    measured = run_measured([sys.executable, "-m", "cruijff_kit", "run", ...])   # exit code, wall time, peak RSS
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cruijff_kit.errors import CkError

SEED_FULL_RUN = {"epochs": 10, "batch_size": 1, "run_val_every_n_steps": 50, "val_rows": 4000}


def design_and_scaffold(scratch: Path, models_dir: Path, data_dir: Path, name: str, *, gpus: int, steps: int,
                        N: int, val_size: int, run_val_every: int, batch_size_val: int | None = None,
                        bit_length: int = 15, mem: str = "32G", time_limit: str = "01:30:00") -> Path:
    """`ck design bit-sequences --preset seed` with the sizes given (1 epoch of `steps` steps), then `ck scaffold`."""
    from cruijff_kit.cli import main

    argv = ["design", "bit-sequences", "--preset", "seed", "--name", name, "--yes",
            "--scratch", str(scratch), "--models-dir", str(models_dir), "--data-dir", str(data_dir),
            "--bit-length", str(bit_length), "--N", str(N), "--val-size", str(val_size),
            "--epochs", "1", "--max-steps-per-epoch", str(steps), "--run-val-every-n-steps", str(run_val_every),
            "--log-every-n-steps", "1", "--gpus", str(gpus), "--mem", mem, "--time", time_limit]
    if batch_size_val is not None:
        argv += ["--batch-size-val", str(batch_size_val)]
    if main(argv) != 0:
        raise CkError("ck design", " ".join(argv), "failed", "see the lines above")
    exp_dir = Path(scratch) / "ck-sanity-checks" / name
    if main(["scaffold", str(exp_dir), "--no-progress"]) != 0:
        raise CkError("ck scaffold", str(exp_dir), "failed", "see the lines above")
    return exp_dir


def read_metrics(output_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (Path(output_dir) / "logs" / "metrics.jsonl").read_text().splitlines()
            if line.strip()]


@dataclass(frozen=True)
class RunTiming:
    steps: int
    seconds: float            # training wall time (metrics.jsonl clock: from the first step, model load excluded)
    val_seconds: float        # of which validating
    val_rows: int             # validation rows evaluated, all passes together
    tokens_per_s: float       # mean of the train lines' tokens_per_second_per_gpu after the first step

    @property
    def train_seconds(self) -> float:
        return self.seconds - self.val_seconds

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.train_seconds if self.train_seconds > 0 else float("nan")

    @property
    def val_share(self) -> float:
        return self.val_seconds / self.seconds if self.seconds > 0 else float("nan")

    @property
    def val_rows_per_s(self) -> float:
        return self.val_rows / self.val_seconds if self.val_seconds > 0 else float("nan")


def run_timing(metrics: list[dict[str, Any]]) -> RunTiming:
    """A validation line's duration is the time since the line before it (the train line of the same step)."""
    end = next((m for m in metrics if m.get("event") == "end"), None)
    if end is None:
        raise ValueError("metrics.jsonl has no end line: the run did not finish")
    previous, val_seconds, val_rows = 0.0, 0.0, 0
    for m in metrics:
        if m.get("event") == "val":
            val_seconds += m["wall_time"] - previous
            val_rows += int(m["val_examples"])
        previous = m.get("wall_time", previous)
    rates = [m["tokens_per_second_per_gpu"] for m in metrics if m.get("event") == "train" and m["step"] > 1]
    return RunTiming(steps=int(end["steps"]), seconds=float(end["wall_time"]), val_seconds=val_seconds,
                     val_rows=val_rows, tokens_per_s=sum(rates) / len(rates) if rates else float("nan"))


def project_full_run_minutes(timing: RunTiming, train_rows: int, startup_seconds: float = 0.0,
                             full: dict[str, int] = SEED_FULL_RUN) -> dict[str, float]:
    """Minutes for the seed's full run at the measured rates: 10 epochs of batch 1 over `train_rows`,
    validating `val_rows` rows every 50 steps and once at the end."""
    steps = full["epochs"] * math.ceil(train_rows / full["batch_size"])
    every = full["run_val_every_n_steps"]
    validations = steps // every + (1 if steps % every else 0)  # the final one, unless it falls on a periodic one
    train_min = steps / timing.steps_per_s / 60
    val_min = validations * full["val_rows"] / timing.val_rows_per_s / 60
    return {"steps": steps, "validations": validations, "train_min": train_min, "val_min": val_min,
            "total_min": train_min + val_min + startup_seconds / 60}


_MEASURE = """
import json, resource, subprocess, sys, time
start = time.monotonic()
rc = subprocess.call(sys.argv[2:])
wall = time.monotonic() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as f:
    json.dump({"returncode": rc, "wall_s": wall, "peak_rss_kb": usage.ru_maxrss}, f)
"""


@dataclass(frozen=True)
class Measured:
    returncode: int
    wall_s: float
    peak_rss_bytes: int       # the largest resident set of any process of the command's tree


def run_measured(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> Measured:
    """Run `argv` under a fresh Python that waits for it: RUSAGE_CHILDREN's ru_maxrss is then the peak RSS
    of the largest process of argv's tree (every descendant is reaped by its parent, as ck's executor does)."""
    fd, out = tempfile.mkstemp(prefix="ck-measure-", suffix=".json")
    os.close(fd)
    try:
        subprocess.run([sys.executable, "-c", _MEASURE, out, *argv], cwd=cwd, env=env, check=False)
        data = json.loads(Path(out).read_text())
    finally:
        os.unlink(out)
    return Measured(data["returncode"], data["wall_s"], data["peak_rss_kb"] * 1024)


class GpuMemoryPoller:
    """Largest `nvidia-smi` memory.used (MiB) seen while running, minus what was used at the start."""

    def __init__(self, period_s: float = 0.5):
        self.period_s = period_s
        self.peak_mib: float | None = None
        self._baseline: float | None = None
        self._thread = None
        self._stop = False

    @staticmethod
    def used_mib() -> float | None:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10)
            return max(float(x) for x in out.stdout.split()) if out.returncode == 0 and out.stdout.split() else None
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return None

    def __enter__(self):
        import threading

        self._baseline = self.used_mib()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop:
            used = self.used_mib()
            if used is not None and self._baseline is not None:
                self.peak_mib = max(self.peak_mib or 0.0, used - self._baseline)
            time.sleep(self.period_s)

    def __exit__(self, *exc) -> None:
        self._stop = True
        if self._thread is not None:
            self._thread.join(timeout=15)
