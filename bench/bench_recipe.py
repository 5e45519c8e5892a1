"""Throughput of the validating recipe against torchtune's stock LoRA recipe, and validation's share of time.

    python bench/bench_recipe.py [--steps 300] [--repeats 2] [--no-write]

Both recipes train the embedded tiny model on the same bit-sequences data with the same config, in this
process, one thread, alternating (stock, ours, stock, ours, ...); the best of the repeats counts. Printed:

- throughput ratio ours/stock (steps/s and label tokens/s over train(), validation off): target >= 1.0
- validation share: time inside validate() / time of train() with validation every 50 steps (the seed's
  cadence) and the final validation: target <= 10 %

Results go to the "## Training recipe" section of bench/RESULTS.md (unless --no-write).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from omegaconf import OmegaConf  # noqa: E402

from sanity_checks.bit_sequences.generator import generate_bit_sequences  # noqa: E402
from cruijff_kit.models.tiny import build_tiny_model  # noqa: E402
from sanity_checks.bit_sequences.presets import EMBEDDED  # noqa: E402
from cruijff_kit.tools.torchtune.custom_recipes import lora_finetune_single_device_val as ours  # noqa: E402


def make_config(tiny_dir: Path, data_file: Path, output_dir: Path, steps: int, val_every: int) -> dict:
    hyper = EMBEDDED["hyper"]

    def dataset(field):
        return {"_component_": "torchtune.datasets.instruct_dataset", "source": "json", "data_files": str(data_file),
                "field": field, "split": "train", "column_map": {"input": "input", "output": "output"},
                "train_on_input": hyper["train_on_input"], "new_system_prompt": None, "packed": False}

    return {
        "output_dir": str(output_dir),
        "model": {"_component_": "cruijff_kit.models.tiny.lora_tiny_llama",
                  "lora_attn_modules": ["q_proj", "v_proj", "output_proj"], "apply_lora_to_mlp": True,
                  "lora_rank": hyper["lora_rank"], "lora_alpha": 2 * hyper["lora_rank"], "lora_dropout": 0.0},
        "tokenizer": {"_component_": "torchtune.models.llama3.llama3_tokenizer",
                      "path": str(tiny_dir / "original" / "tokenizer.model"),
                      "special_tokens_path": str(tiny_dir / "original" / "special_tokens.json"), "max_seq_len": 64},
        "checkpointer": {"_component_": "torchtune.training.FullModelHFCheckpointer", "checkpoint_dir": str(tiny_dir),
                         "checkpoint_files": ["model.safetensors"], "recipe_checkpoint": None,
                         "output_dir": str(output_dir), "model_type": "LLAMA3_2"},
        "resume_from_checkpoint": False, "save_adapter_weights_only": True,
        "dataset": dataset("train"), "seed": hyper["seed"], "shuffle": True, "batch_size": hyper["batch_size"],
        "optimizer": {"_component_": "torch.optim.AdamW", "fused": False, "weight_decay": 0.01, "lr": hyper["lr"]},
        "lr_scheduler": {"_component_": "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup",
                         "num_warmup_steps": hyper["num_warmup_steps"]},
        "loss": {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"},
        "epochs": 1, "max_steps_per_epoch": steps, "gradient_accumulation_steps": 1, "clip_grad_norm": None,
        "compile": False,
        "metric_logger": {"_component_": "torchtune.training.metric_logging.DiskLogger", "log_dir": f"{output_dir}/logs"},
        "log_every_n_steps": hyper["log_every_n_steps"], "log_peak_memory_stats": False,
        "device": "cpu", "dtype": "fp32",
        "enable_activation_checkpointing": False, "enable_activation_offloading": False,
        "profiler": {"_component_": "torchtune.training.setup_torch_profiler", "enabled": False},
        "dataset_val": dataset("validation"), "run_val_every_n_steps": val_every, "batch_size_val": 64,
        "max_val_batches": None, "epochs_to_save": None, "num_threads": 1,
        "metrics_log": f"{output_dir}/logs/metrics.jsonl",
    }


def label_tokens(recipe, steps: int) -> int:
    ignore = recipe._loss_fn.ignore_index
    total = 0
    for i, batch in enumerate(recipe._dataloader):
        if i == steps:
            break
        total += int((batch["labels"] != ignore).sum())
    return total


def time_train(recipe_cls, cfg_dict: dict) -> tuple[float, float, int]:
    """(seconds in train(), seconds in validate(), optimizer steps)."""
    cfg = OmegaConf.create(cfg_dict)
    recipe = recipe_cls(cfg)
    recipe.setup(cfg)
    val_seconds = 0.0
    if hasattr(recipe, "validate"):
        inner = recipe.validate

        def timed_validate(*args, **kwargs):
            nonlocal val_seconds
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                val_seconds += time.perf_counter() - start

        recipe.validate = timed_validate
    start = time.perf_counter()
    recipe.train()
    seconds = time.perf_counter() - start
    steps = recipe.global_step
    recipe.cleanup()
    return seconds, val_seconds, steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    stock_cls = ours._stock.LoRAFinetuneRecipeSingleDevice
    run = EMBEDDED["runs"]["parity_run"]

    with tempfile.TemporaryDirectory(prefix="ck-bench-recipe-") as tmp:
        tmp = Path(tmp)
        tiny_dir = build_tiny_model(tmp / "models")
        data_file = tmp / "parity.json"
        data = generate_bit_sequences(run["bit_length"], max(run["N"], args.steps * EMBEDDED["hyper"]["batch_size"] + run["val_size"] + 1),
                                      run["val_size"], True, 0.0, 42)
        data_file.write_text(json.dumps(data))

        best = {"stock": float("inf"), "ours": float("inf")}
        steps = {}
        for r in range(args.repeats):
            for name, cls in (("stock", stock_cls), ("ours", ours.LoRAFinetuneRecipeSingleDeviceVal)):
                cfg = make_config(tiny_dir, data_file, tmp / f"{name}-{r}", args.steps, val_every=0)
                seconds, _, steps[name] = time_train(cls, cfg)
                best[name] = min(best[name], seconds)
                print(f"  {name:5s} repeat {r}: {steps[name]} steps in {seconds:.2f}s", flush=True)
        assert steps["stock"] == steps["ours"], steps

        cfg = make_config(tiny_dir, data_file, tmp / "tokens", args.steps, val_every=0)
        probe = ours.LoRAFinetuneRecipeSingleDeviceVal(OmegaConf.create(cfg))
        probe.setup(OmegaConf.create(cfg))
        probe._dataloader.sampler.set_epoch(0)
        tokens = label_tokens(probe, args.steps)
        probe.cleanup()

        # validation share on the larger validation set of the two runs (the probabilistic run's)
        val_run = max(EMBEDDED["runs"].values(), key=lambda r: r["val_size"])
        val_file = tmp / "validation-share.json"
        val_file.write_text(json.dumps(generate_bit_sequences(
            val_run["bit_length"], max(val_run["N"], args.steps * EMBEDDED["hyper"]["batch_size"] + val_run["val_size"] + 1),
            val_run["val_size"], val_run["bit_parity"], val_run["p"], 42)))
        val_every = 50
        shares = []
        for r in range(args.repeats):
            cfg = make_config(tiny_dir, val_file, tmp / f"val-{r}", args.steps, val_every=val_every)
            seconds, val_seconds, _ = time_train(ours.LoRAFinetuneRecipeSingleDeviceVal, cfg)
            shares.append(val_seconds / seconds)
            print(f"  ours with validation every {val_every} steps, repeat {r}: {seconds:.2f}s, "
                  f"validation {val_seconds:.2f}s", flush=True)
        share = min(shares)

    n = steps["ours"]
    ratio = best["stock"] / best["ours"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()} CPU, torch "
        f"{torch.__version__}, 1 thread, tiny model, EMBEDDED parity data (bit_length {run['bit_length']}, "
        f"val_size {run['val_size']}), batch {EMBEDDED['hyper']['batch_size']}, {n} steps, best of {args.repeats}.",
        "",
        "| recipe | train() s | steps/s | label tokens/s |",
        "|---|---|---|---|",
        f"| torchtune lora_finetune_single_device (stock) | {best['stock']:.2f} | {n / best['stock']:.1f} | {tokens / best['stock']:.0f} |",
        f"| lora_finetune_single_device_val (ours, validation off) | {best['ours']:.2f} | {n / best['ours']:.1f} | {tokens / best['ours']:.0f} |",
        "",
        f"- throughput ratio ours/stock: **{ratio:.3f}x** (target >= 1.0; same steps and tokens, so steps/s and tokens/s ratios are equal)",
        f"- validation share of train() time at run_val_every_n_steps={val_every} (+ final validation, "
        f"{val_run['val_size']} rows of the {val_run['bit_length']}-bit probabilistic data, batch_size_val 64): "
        f"**{100 * share:.1f} %** (target <= 10 %)",
        "- noise: other processes share this 2-core machine; ratios within a few % of 1.0 are ties.",
    ]
    print("\n".join(lines))
    print(f"throughput ratio (ours/stock): {ratio:.3f}")
    print(f"validation share: {100 * share:.1f} %")
    if not args.no_write:
        from cruijff_kit.markdown_sections import set_section

        set_section(REPO / "bench" / "RESULTS.md", "Training recipe",
                    "`python bench/bench_recipe.py`\n\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
