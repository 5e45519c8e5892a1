"""The distributed validating recipe: two real gloo processes (torchrun) on the embedded tiny model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sanity_checks.bit_sequences.generator import generate_bit_sequences
from test_recipe import make_config, read_metrics, subprocess_env, write_config  # noqa: E402

DIST_MODULE = "cruijff_kit.tools.torchtune.custom_recipes.lora_finetune_distributed_val"
REPO = Path(__file__).resolve().parents[1]
DIST_FILE = REPO / "cruijff_kit" / "tools" / "torchtune" / "custom_recipes" / "lora_finetune_distributed_val.py"
VAL_ROWS = 21  # odd, with batch_size_val 5: rank 0 gets 11 rows (3 batches), rank 1 10 (2 batches + 1 filler)
STEPS = 4


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "parity.json"
    path.write_text(json.dumps(generate_bit_sequences(6, 120, VAL_ROWS, True, 0.0, 7)))
    return path


def torchrun(config_path: Path, cwd: Path, *overrides: str, procs: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
               "-m", DIST_MODULE, "--config", str(config_path), *overrides]
    return subprocess.run(command, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=300)


def tune_run(config_path: Path, *overrides: str, procs: int = 2) -> subprocess.CompletedProcess:
    """torchtune's own launcher, as finetune.slurm runs it: `tune run --nproc_per_node N <recipe file>` from the
    repository root (tune run turns a custom recipe's relative path into a module name; torchrun underneath)."""
    command = [sys.executable, "-m", "torchtune._cli.tune", "run", "--nproc_per_node", str(procs),
               str(DIST_FILE.relative_to(REPO)), "--config", str(config_path), *overrides]
    return subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_dir, data_file):
    """One 2-process run: 2 epochs of STEPS steps, validation every 2 steps, both epochs saved."""
    tmp = tmp_path_factory.mktemp("dist")
    out = tmp / "out"
    cfg = make_config(tiny_dir, data_file, out, epochs=2, max_steps_per_epoch=STEPS, run_val_every_n_steps=2,
                      batch_size_val=5, log_every_n_steps=1, epochs_to_save="all")
    config_path = write_config(tmp, cfg)
    proc = torchrun(config_path, tmp)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp, out, cfg, config_path


@pytest.mark.training
def test_two_processes_write_each_metric_once_on_rank_zero(two_process_run):
    _, out, _, _ = two_process_run
    events = read_metrics(out)
    train = [e for e in events if e["event"] == "train"]
    val = [e for e in events if e["event"] == "val"]
    assert [e["step"] for e in train] == list(range(1, 2 * STEPS + 1))  # once per step, not once per rank
    assert [(e["step"], e["final"]) for e in val] == [(2, False), (4, False), (6, False), (8, True)]
    assert [e["event"] for e in events].count("end") == 1 and events[-1]["steps"] == 2 * STEPS
    assert all(e["val_examples"] == VAL_ROWS for e in val)
    assert all(0 <= e["train_answer_acc"] <= 1 and e["train_answer_loss"] > 0 for e in train)
    predictions = [json.loads(line) for line in (out / "logs" / "val_predictions.jsonl").read_text().splitlines()]
    assert [p["index"] for p in predictions] == list(range(VAL_ROWS))  # every row once, from both ranks
    assert (out / "epoch_0" / "adapter_model.pt").is_file() and (out / "epoch_1" / "adapter_model.pt").is_file()


@pytest.mark.training
def test_two_process_validation_equals_one_process_evaluation_of_the_checkpoint(two_process_run):
    from omegaconf import OmegaConf

    from cruijff_kit.tools.torchtune.custom_recipes.lora_finetune_single_device_val import (
        LoRAFinetuneRecipeSingleDeviceVal,
    )

    tmp, out, cfg, _ = two_process_run
    final = [e for e in read_metrics(out) if e["event"] == "val" and e["final"]][0]
    distributed_predictions = [json.loads(line) for line in
                               (out / "logs" / "val_predictions.jsonl").read_text().splitlines()]

    # one process, the single-device recipe, the last epoch's adapter: the same rows, another batching
    single_out = tmp / "single"
    single_cfg = OmegaConf.create({**cfg, "output_dir": str(single_out), "batch_size_val": 8,
                                   "metrics_log": str(single_out / "logs" / "metrics.jsonl")})
    recipe = LoRAFinetuneRecipeSingleDeviceVal(single_cfg)
    recipe.setup(single_cfg)
    try:
        adapter = torch.load(out / "epoch_1" / "adapter_model.pt", map_location="cpu", weights_only=True)
        missing, unexpected = recipe._model.load_state_dict(adapter, strict=False)
        assert not unexpected and len(adapter) == 24
        scalars = recipe.validate(epoch=1, final=True)
    finally:
        recipe.cleanup()

    assert scalars["val_examples"] == final["val_examples"] == VAL_ROWS
    for key in ("val_loss", "val_answer_loss", "val_answer_acc"):
        assert final[key] == pytest.approx(scalars[key], rel=1e-5, abs=1e-6), key
    single_predictions = [json.loads(line) for line in
                          (single_out / "logs" / "val_predictions.jsonl").read_text().splitlines()]
    assert [p["predicted"] for p in single_predictions] == [p["predicted"] for p in distributed_predictions]
    assert [p["answer_loss"] for p in single_predictions] == pytest.approx(
        [p["answer_loss"] for p in distributed_predictions], rel=1e-5, abs=1e-6)


@pytest.mark.training
def test_two_processes_resume_after_the_last_saved_epoch_through_tune_run(two_process_run):
    tmp, out, _, config_path = two_process_run
    resumed_out = tmp / "resumed"
    shutil.copytree(out, resumed_out)
    shutil.rmtree(resumed_out / "epoch_1")  # as if killed during epoch 1
    (resumed_out / "logs" / "metrics.jsonl").unlink()
    proc = tune_run(config_path, f"output_dir={resumed_out}", "resume_from_checkpoint=True")
    assert proc.returncode == 0, proc.stderr[-4000:]
    events = read_metrics(resumed_out)
    train = [e for e in events if e["event"] == "train"]
    assert [(e["epoch"], e["step"]) for e in train] == [(1, s) for s in range(STEPS + 1, 2 * STEPS + 1)]
    # the resumed epoch trains the same rows from the same state: the same losses as the uninterrupted run
    original = [e for e in read_metrics(out) if e["event"] == "train" and e["epoch"] == 1]
    assert [e["loss"] for e in train] == pytest.approx([e["loss"] for e in original], rel=1e-4)
    assert (resumed_out / "epoch_1" / "adapter_model.pt").is_file()


def test_backend_follows_the_device():
    from cruijff_kit.tools.torchtune.custom_recipes.lora_finetune_distributed_val import process_group_backend

    assert process_group_backend("cpu") == "gloo"
    if torch.cuda.is_available():
        assert process_group_backend("cuda") == "cuda:nccl,cpu:gloo"


@pytest.mark.slow
def test_distributed_recipe_refuses_to_run_without_a_launcher(tmp_path, tiny_dir, data_file):
    config_path = write_config(tmp_path, make_config(tiny_dir, data_file, tmp_path / "out"))
    env = {k: v for k, v in subprocess_env().items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    proc = subprocess.run([sys.executable, "-m", DIST_MODULE, "--config", str(config_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "launcher='python'" in proc.stderr and "torchrun" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def child_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


@pytest.mark.training
def test_a_killed_rank_fails_the_run_without_a_hang(tmp_path, tiny_dir, data_file):
    import signal
    import time

    out = tmp_path / "out"
    cfg = make_config(tiny_dir, data_file, out, epochs=50, batch_size=2, run_val_every_n_steps=0, dataset_val=None,
                      log_every_n_steps=1, epochs_to_save=[])
    config_path = write_config(tmp_path, cfg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", DIST_MODULE, "--config", str(config_path)]
    proc = subprocess.Popen(command, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        metrics = out / "logs" / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        ranks = child_pids(proc.pid)
        assert len(ranks) == 2 and proc.poll() is None, "training did not start"
        os.kill(ranks[1], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)  # a hang fails here
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "SIGKILL" in stderr or "Signal 9" in stderr or "exitcode: -9" in stderr, stderr[-2000:]
