"""The seed's own model path, for real: the Llama-3.2-1B architecture (random init, HF layout, real tensor
names and config.json), Meta's Llama 3 tokenizer from `llama-models`, `--preset seed` run on CPU for 2
steps through design -> scaffold -> `ck run` (local executor).

The run is slow (about 2.5 minutes and 8 GB peak RSS on the 2-core development machine; bench/RESULTS.md keeps the
figures): deselect with -m "not slow". The 2.5 GB checkpoint is removed at the end.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from cruijff_kit.cli import main
from cruijff_kit.models.random_init import write_random_llama
from cruijff_kit.models.seed_run import (
    design_and_scaffold,
    project_full_run_minutes,
    read_metrics,
    run_measured,
    run_timing,
)

slow = pytest.mark.slow

STEPS = 2
VAL_ROWS = 4


@pytest.fixture(scope="module")
def seed_model_dir(tmp_path_factory):
    models = tmp_path_factory.mktemp("seed-models")
    path = write_random_llama(models, dtype="bfloat16", seed=0)
    yield path
    shutil.rmtree(models, ignore_errors=True)  # 2.5 GB: do not leave it to pytest's keep-3-sessions cleanup


@pytest.fixture(scope="module")
def seed_experiment(seed_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("seed-check")
    exp_dir = design_and_scaffold(
        root / "scratch", seed_model_dir.parent, root / "data", "seed_smoke", gpus=0, steps=STEPS, N=200,
        val_size=VAL_ROWS, run_val_every=STEPS, batch_size_val=VAL_ROWS, mem="12G", time_limit="00:20:00")
    measured = run_measured([sys.executable, "-m", "cruijff_kit", "run", str(exp_dir), "--executor", "local",
                             "--max-submit", "1", "--poll", "1", "--no-live"])
    print(f"\nseed smoke: ck run {measured.wall_s:.0f} s wall, peak RSS {measured.peak_rss_bytes / 2**30:.2f} GiB")
    yield exp_dir, measured
    shutil.rmtree(root / "scratch" / "ck-outputs", ignore_errors=True)


@slow
def test_verify_accepts_the_seed_model_directory(seed_model_dir, capsys):
    assert main(["models", "verify", str(seed_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "ok: Llama-3.2-1B-Instruct (16 layers, hidden 2048, 32/8 heads, vocab 128256), bfloat16" in out


@slow
def test_the_seed_check_runs_to_completed_on_cpu(seed_experiment):
    exp_dir, measured = seed_experiment
    assert measured.returncode == 0
    state = json.loads((exp_dir / ".ck-run-state.json").read_text())["runs"]
    assert {name: run["state"] for name, run in state.items()} == {
        "parity_run": "COMPLETED", "probabilistic_run": "COMPLETED"}


def _rendered(exp_dir: Path, run: str) -> dict:
    return yaml.safe_load((exp_dir / run / "finetune.yaml").read_text())


@slow
def test_the_runs_trained_the_real_architecture_with_the_real_tokenizer(seed_experiment, seed_model_dir):
    exp_dir, _ = seed_experiment
    cfg = _rendered(exp_dir, "parity_run")
    assert cfg["model"]["_component_"] == "torchtune.models.llama3_2.lora_llama3_2_1b"
    assert cfg["tokenizer"]["path"] == str(seed_model_dir / "original" / "tokenizer.model")
    assert "special_tokens_path" not in cfg["tokenizer"]
    assert (cfg["device"], cfg["dtype"], cfg["batch_size"]) == ("cpu", "fp32", 1)
    assert cfg["checkpointer"]["checkpoint_dir"] == str(seed_model_dir)


@slow
@pytest.mark.parametrize("run", ["parity_run", "probabilistic_run"])
def test_metrics_have_train_and_validation_answer_metrics(seed_experiment, run):
    exp_dir, _ = seed_experiment
    output_dir = Path(_rendered(exp_dir, run)["output_dir"])
    metrics = read_metrics(output_dir)
    train = [m for m in metrics if m["event"] == "train"]
    val = [m for m in metrics if m["event"] == "val"]
    assert [m["step"] for m in train] == list(range(1, STEPS + 1))
    assert [m["step"] for m in val] == [STEPS] and val[-1]["final"] is True  # validated once, at the end
    for m in train:
        assert math.isfinite(m["train_answer_loss"]) and m["train_answer_acc"] in (0.0, 1.0)
    for m in val:
        assert m["val_examples"] == VAL_ROWS and math.isfinite(m["val_answer_loss"])
        assert 0.0 <= m["val_answer_acc"] <= 1.0
    # a random-init model over the 128,256-token vocabulary: the answer token is about ln(128256) = 11.8 nats away
    assert 6.0 < val[-1]["val_answer_loss"] < 20.0
    predictions = [json.loads(line) for line in (output_dir / "logs" / "val_predictions.jsonl").read_text().splitlines()]
    assert [p["target"] for p in predictions] and {p["target"] for p in predictions} <= {"0", "1"}
    assert len(predictions) == VAL_ROWS
    timing = run_timing(metrics)
    assert timing.steps == STEPS and 0 < timing.val_seconds < timing.seconds


@slow
def test_the_adapter_checkpoint_reloads_into_the_builder(seed_experiment):
    import torch
    from safetensors.torch import load_file
    from torchtune import config as tt_config
    from torchtune.modules.peft import get_adapter_params

    exp_dir, _ = seed_experiment
    cfg = _rendered(exp_dir, "parity_run")
    epoch_dir = Path(cfg["output_dir"]) / "epoch_0"
    adapter = torch.load(epoch_dir / "adapter_model.pt", map_location="cpu", weights_only=True)
    with torch.device("meta"):
        model = tt_config.instantiate(yaml_to_omegaconf(cfg["model"]))
    expected = {name: tuple(p.shape) for name, p in get_adapter_params(model).items()}
    assert {name: tuple(t.shape) for name, t in adapter.items()} == expected
    result = model.load_state_dict(adapter, strict=False, assign=True)
    assert not result.unexpected_keys
    assert all(torch.isfinite(t).all() for t in adapter.values())
    assert any(name.endswith("lora_b.weight") and t.abs().sum() > 0 for name, t in adapter.items())  # trained
    peft = load_file(str(epoch_dir / "adapter_model.safetensors"))
    assert len(peft) == len(adapter)


def test_timing_splits_validation_from_training_and_projects_the_full_run():
    metrics = [
        {"event": "train", "step": 1, "wall_time": 1.0, "tokens_per_second_per_gpu": 50.0},
        {"event": "train", "step": 2, "wall_time": 2.0, "tokens_per_second_per_gpu": 30.0},
        {"event": "val", "step": 2, "wall_time": 5.0, "val_examples": 4, "final": False},
        {"event": "train", "step": 3, "wall_time": 6.0, "tokens_per_second_per_gpu": 10.0},
        {"event": "val", "step": 3, "wall_time": 8.0, "val_examples": 4, "final": True},
        {"event": "end", "step": 3, "wall_time": 8.0, "steps": 3},
    ]
    t = run_timing(metrics)
    assert (t.steps, t.seconds, t.val_seconds, t.val_rows) == (3, 8.0, 5.0, 8)
    assert (t.steps_per_s, t.val_share, t.val_rows_per_s, t.tokens_per_s) == (1.0, 5 / 8, 8 / 5, 20.0)
    p = project_full_run_minutes(t, train_rows=95, startup_seconds=30.0)
    assert (p["steps"], p["validations"]) == (950, 19)  # 10 epochs x 95 rows at batch 1; every 50 steps (950 = 19 x 50)
    assert p["train_min"] == 950 / 60 and p["val_min"] == 19 * 4000 / (8 / 5) / 60
    assert p["total_min"] == p["train_min"] + p["val_min"] + 0.5
    assert project_full_run_minutes(t, train_rows=96)["validations"] == 20  # 960 steps: 19 + the final one
    with pytest.raises(ValueError, match="no end line"):
        run_timing(metrics[:-1])


def yaml_to_omegaconf(node: dict):
    from omegaconf import OmegaConf

    return OmegaConf.create(node)
