"""The seed configuration on one GPU with the random-init Llama-3.2-1B: throughput, validation share, memory.

    bash bench/gpu_seed.sh [--steps 300] [--keep]       (after ./test.sh or bash scripts/bootstrap.sh)

Designs `ck design bit-sequences --preset seed` unchanged except 1 epoch of --steps steps (bit_length 15,
N 33000, batch 1, lr 3e-4, LoRA rank 8, validation every 50 steps on the 4,000 validation rows at the
renderer's batch_size_val), scaffolds it with a random-init Llama-3.2-1B-Instruct (real architecture,
config.json and Llama 3 tokenizer; cruijff_kit.models.random_init) and runs parity_run's finetune.slurm
with bash, as a SLURM node would. It prints steps/s, tokens/s, the share of time spent validating, peak GPU
memory (torchtune's own figure and nvidia-smi's), and projects minutes per full seed run (10 epochs of the
25,671 training rows left after de-duplication) against the seed README's "40-80 min on one A100".

Exit codes: 0 measured; 3 no CUDA device (nothing is written); 1 the run failed (its log tail is printed).
Everything goes to a temporary directory (2.5 GB model, ~10 MB outputs) removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

NO_CUDA_EXIT = 3
SEED_CLAIM_MIN = (40, 80)


def cuda_device() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps to time (default 300: 6 validations)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and print its path")
    parser.add_argument("--workdir", type=Path, default=None, help="where to put the temporary directory")
    parser.add_argument("--cpu-check", action="store_true",
                        help="check this bench itself on a CPU: 3 steps, N 200, 8 validation rows (minutes, ~8 GB RAM); "
                        "its numbers say nothing about a GPU")
    args = parser.parse_args(argv)

    device = "CPU (--cpu-check)" if args.cpu_check else cuda_device()
    if device is None:
        print("gpu_seed: no CUDA device (torch.cuda.is_available() is False): this bench needs one NVIDIA GPU; "
              "nothing was run", file=sys.stderr)
        return NO_CUDA_EXIT

    from cruijff_kit.models.random_init import write_random_llama
    from cruijff_kit.models.seed_run import GpuMemoryPoller, design_and_scaffold, project_full_run_minutes, \
        read_metrics, run_timing
    from sanity_checks.bit_sequences.presets import SEED

    root = Path(tempfile.mkdtemp(prefix="ck-gpu-seed-", dir=args.workdir))
    try:
        print(f"gpu_seed: {device}; writing the random-init Llama-3.2-1B-Instruct under {root} ...", flush=True)
        model_dir = write_random_llama(root / "models", dtype="bfloat16")
        gen = SEED["runs"]["parity_run"]
        sizes = dict(gpus=1, steps=args.steps, N=gen["N"], val_size=gen["val_size"],
                     run_val_every=SEED["hyper"]["run_val_every_n_steps"])
        if args.cpu_check:
            sizes = dict(gpus=0, steps=3, N=200, val_size=8, run_val_every=2, batch_size_val=8)
        exp_dir = design_and_scaffold(root / "scratch", model_dir.parent, root / "data", "gpu_seed",
                                      bit_length=gen["bit_length"], **sizes)
        run_dir = exp_dir / "parity_run"
        _ask_for_peak_memory(run_dir / "finetune.yaml")
        rendered = yaml.safe_load((run_dir / "finetune.yaml").read_text())
        output_dir = Path(rendered["output_dir"])
        data_file = Path(rendered["dataset"]["data_files"])
        train_rows = len(json.loads(data_file.read_text())["train"])

        print(f"gpu_seed: training {sizes['steps']} steps of parity_run (bash finetune.slurm) ...", flush=True)
        start = time.monotonic()
        with GpuMemoryPoller() as poller:
            proc = subprocess.run(["bash", "finetune.slurm"], cwd=run_dir, capture_output=True, text=True)
        wall = time.monotonic() - start
        if proc.returncode != 0:
            print((proc.stdout + proc.stderr)[-4000:], file=sys.stderr)
            print(f"gpu_seed: the run failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        metrics = read_metrics(output_dir)
        timing = run_timing(metrics)
        startup = wall - timing.seconds
        torchtune_peak = max((m.get("peak_memory_reserved", 0.0) for m in metrics if m["event"] == "train"),
                             default=0.0)
        projection = project_full_run_minutes(timing, train_rows, startup_seconds=startup)
        _report(device, timing, wall, startup, torchtune_peak, poller.peak_mib, train_rows,
                rendered, projection)
        return 0
    finally:
        if args.keep:
            print(f"gpu_seed: kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _ask_for_peak_memory(finetune_yaml: Path) -> None:
    """torchtune logs peak_memory_* with each train line when asked (not a setup_finetune.yaml key)."""
    text, count = re.subn(r"(?mi)^log_peak_memory_stats:\s*false\s*$", "log_peak_memory_stats: true",
                          finetune_yaml.read_text())
    if count != 1 or yaml.safe_load(text)["log_peak_memory_stats"] is not True:
        raise SystemExit(f"gpu_seed: cannot find log_peak_memory_stats in {finetune_yaml}")
    finetune_yaml.write_text(text)


def rendered_val_rows(rendered) -> int:
    return len(json.loads(Path(rendered["dataset"]["data_files"]).read_text())["validation"])


def _report(device, timing, wall, startup, torchtune_peak_gib, smi_peak_mib, train_rows, rendered,
            projection) -> None:
    low, high = SEED_CLAIM_MIN
    total = projection["total_min"]
    verdict = "within" if low <= total <= high else ("faster than" if total < low else "slower than")
    smi = f"{smi_peak_mib / 1024:.2f} GiB (nvidia-smi, whole run)" if smi_peak_mib is not None else "nvidia-smi not available"
    print(f"""
device                {device}
config                bit_length 15, {train_rows} train / {rendered_val_rows(rendered)} validation rows, batch {rendered['batch_size']}, {rendered['dtype']}, LoRA rank {rendered['model']['lora_rank']}, val every {rendered['run_val_every_n_steps']} steps, batch_size_val {rendered['batch_size_val']}
measured              {timing.steps} steps in {timing.seconds:.1f} s of training ({wall:.1f} s wall, {startup:.1f} s start-up)
steps/s               {timing.steps_per_s:.2f}   (training only, validation excluded)
tokens/s              {timing.tokens_per_s:.1f}   (label tokens, torchtune's tokens_per_second_per_gpu)
validation            {timing.val_rows} rows in {timing.val_seconds:.1f} s: {timing.val_rows_per_s:.1f} rows/s, {timing.val_share:.0%} of training time
peak GPU memory       {torchtune_peak_gib:.2f} GiB reserved (torchtune's peak_memory_reserved); {smi}
full seed run         {projection['steps']} steps (10 epochs x {train_rows} rows), {projection['validations']} validations of 4000 rows
projected             {total:.0f} min per run = {projection['train_min']:.0f} training + {projection['val_min']:.0f} validating + {startup / 60:.1f} start-up
seed README           40-80 min per run on one A100: this projection is {verdict} that""")


if __name__ == "__main__":
    sys.exit(main())
