"""The validating LoRA recipe, with real torchtune on the embedded tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sanity_checks.bit_sequences.generator import generate_bit_sequences

REPO = Path(__file__).resolve().parents[1]
RECIPE_MODULE = "cruijff_kit.tools.torchtune.custom_recipes.lora_finetune_single_device_val"
RECIPE_FILE = REPO / "cruijff_kit" / "tools" / "torchtune" / "custom_recipes" / "lora_finetune_single_device_val.py"
VENV_BIN = Path(sys.executable).parent

TRAIN_KEYS = {"loss", "lr", "tokens_per_second_per_gpu", "train_answer_loss", "train_answer_acc"}
VAL_KEYS = {"val_loss", "val_answer_loss", "val_answer_acc", "val_examples", "final"}
COMMON_KEYS = {"event", "step", "epoch", "wall_time", "time"}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "parity.json"
    path.write_text(json.dumps(generate_bit_sequences(6, 120, 20, True, 0.0, 7)))
    return path


def make_config(tiny_dir: Path, data_file: Path, output_dir: Path, **overrides) -> dict:
    """A finetune.yaml following docs/finetune_reference.yaml, small enough for a test."""

    def dataset(field, train_on_input=True):
        return {
            "_component_": "torchtune.datasets.instruct_dataset", "source": "json", "data_files": str(data_file),
            "field": field, "split": "train", "column_map": {"input": "input", "output": "output"},
            "train_on_input": train_on_input, "new_system_prompt": None, "packed": False,
        }

    cfg = {
        "output_dir": str(output_dir),
        "model": {"_component_": "cruijff_kit.models.tiny.lora_tiny_llama",
                  "lora_attn_modules": ["q_proj", "v_proj", "output_proj"], "apply_lora_to_mlp": True,
                  "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0},
        "tokenizer": {"_component_": "torchtune.models.llama3.llama3_tokenizer",
                      "path": str(tiny_dir / "original" / "tokenizer.model"),
                      "special_tokens_path": str(tiny_dir / "original" / "special_tokens.json"),
                      "max_seq_len": 64},
        "checkpointer": {"_component_": "torchtune.training.FullModelHFCheckpointer",
                         "checkpoint_dir": str(tiny_dir), "checkpoint_files": ["model.safetensors"],
                         "recipe_checkpoint": None, "output_dir": "${output_dir}", "model_type": "LLAMA3_2"},
        "resume_from_checkpoint": False,
        "save_adapter_weights_only": True,
        "dataset": dataset("train"),
        "seed": 42,
        "shuffle": True,
        "batch_size": 4,
        "optimizer": {"_component_": "torch.optim.AdamW", "fused": False, "weight_decay": 0.01, "lr": 3e-3},
        "lr_scheduler": {"_component_": "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup",
                         "num_warmup_steps": 2},
        "loss": {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"},
        "epochs": 1,
        "max_steps_per_epoch": None,
        "gradient_accumulation_steps": 1,
        "clip_grad_norm": None,
        "compile": False,
        "metric_logger": {"_component_": "torchtune.training.metric_logging.DiskLogger",
                          "log_dir": "${output_dir}/logs"},
        "log_every_n_steps": 1,
        "log_peak_memory_stats": False,
        "device": "cpu",
        "dtype": "fp32",
        "enable_activation_checkpointing": False,
        "enable_activation_offloading": False,
        "profiler": {"_component_": "torchtune.training.setup_torch_profiler", "enabled": False},
        "dataset_val": dataset("validation"),
        "run_val_every_n_steps": 3,
        "batch_size_val": 8,
        "max_val_batches": None,
        "epochs_to_save": None,
        "num_threads": 1,
        "metrics_log": "${output_dir}/logs/metrics.jsonl",
    }
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return cfg


def write_config(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def read_metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "logs" / "metrics.jsonl").read_text().splitlines()]


def epoch_started(output_dir: Path, epoch: int) -> bool:
    path = output_dir / "logs" / "metrics.jsonl"
    if not path.exists():
        return False
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line being written right now
            continue
        if row.get("event") == "train" and row.get("epoch") == epoch:
            return True
    return False


def subprocess_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WANDB_MODE", None)
    return env


def run_recipe_in_process(cfg_dict: dict):
    """Set up and train the recipe in this process; returns the recipe (not cleaned up: caller's job)."""
    from omegaconf import OmegaConf

    from cruijff_kit.tools.torchtune.custom_recipes import lora_finetune_single_device_val as mod

    cfg = OmegaConf.create(cfg_dict)
    recipe = mod.LoRAFinetuneRecipeSingleDeviceVal(cfg)
    recipe.setup(cfg)
    return recipe


def direct_answer_metrics(recipe, rows: list[dict]) -> tuple[float, float]:
    """Answer-token loss and accuracy computed here, independently of the recipe's answer locator:
    the conversation tokenized by the model tokenizer ends with <answer> <|eot_id|> <|end_of_text|>."""
    import torch
    import torch.nn.functional as F
    from torchtune.data import Message

    losses, hits = [], []
    recipe._model.eval()
    with torch.no_grad():
        for row in rows:
            tokens, _ = recipe._tokenizer.tokenize_messages(
                [Message("user", row["input"]), Message("assistant", row["output"])])
            pos = len(tokens) - 3
            assert recipe._tokenizer.decode([tokens[pos]]) == row["output"]
            logits = recipe._model(torch.tensor([tokens]))
            if isinstance(logits, list):
                logits = torch.cat(logits, dim=1)
            answer_logits = logits[0, pos - 1].float()
            losses.append(F.cross_entropy(answer_logits[None], torch.tensor([tokens[pos]])).item())
            hits.append(float(answer_logits.argmax().item() == tokens[pos]))
    recipe._model.train()
    return sum(losses) / len(losses), sum(hits) / len(hits)


@pytest.mark.training
@pytest.mark.parametrize("train_on_input", [True, False])
def test_answer_metrics_equal_direct_computation(tmp_path, tiny_dir, data_file, train_on_input):
    data = json.loads(data_file.read_text())
    cfg = make_config(tiny_dir, data_file, tmp_path / "out", shuffle=False, max_steps_per_epoch=1,
                      run_val_every_n_steps=1, batch_size_val=7, **{
                          "optimizer.lr": 0.0, "dataset.train_on_input": train_on_input,
                          "dataset_val.train_on_input": train_on_input})
    recipe = run_recipe_in_process(cfg)
    try:
        # before any step: the model the direct computation sees is the one the recipe evaluates
        expected_val = direct_answer_metrics(recipe, data["validation"])
        expected_train = direct_answer_metrics(recipe, data["train"][:4])
        recipe.train()  # lr 0: one step that leaves the weights as they are, then the final validation
    finally:
        recipe.cleanup()
    events = read_metrics(tmp_path / "out")
    train = [e for e in events if e["event"] == "train"]
    val = [e for e in events if e["event"] == "val"]
    assert len(train) == 1 and len(val) == 1 and val[0]["final"] is True
    assert val[0]["val_examples"] == len(data["validation"])
    assert val[0]["val_answer_loss"] == pytest.approx(expected_val[0], rel=1e-5, abs=1e-6)
    assert val[0]["val_answer_acc"] == pytest.approx(expected_val[1])
    assert train[0]["train_answer_loss"] == pytest.approx(expected_train[0], rel=1e-5, abs=1e-6)
    assert train[0]["train_answer_acc"] == pytest.approx(expected_train[1])
    # train and validation losses are over the same token set: with identical rows they would match
    assert 0 < val[0]["val_loss"] < 20

    predictions = [json.loads(line) for line in (tmp_path / "out" / "logs" / "val_predictions.jsonl").read_text().splitlines()]
    assert [p["index"] for p in predictions] == list(range(len(data["validation"])))
    assert [p["input"] for p in predictions] == [r["input"] for r in data["validation"]]
    assert [p["target"] for p in predictions] == [r["output"] for r in data["validation"]]
    mean_loss = sum(p["answer_loss"] for p in predictions) / len(predictions)
    assert mean_loss == pytest.approx(val[0]["val_answer_loss"], rel=1e-5)


@pytest.mark.training
def test_python_m_run_logs_metrics_validates_once_per_cadence_and_fills_wandb(tmp_path, tiny_dir, data_file):
    out = tmp_path / "out"
    cfg = make_config(tiny_dir, data_file, out, gradient_accumulation_steps=2, run_val_every_n_steps=3,
                      log_every_n_steps=2, max_val_batches=2, batch_size_val=4, epochs_to_save=[],
                      metric_logger={"_component_": "torchtune.training.metric_logging.WandBLogger",
                                     "project": "ck_test", "name": "parity_run", "mode": "offline",
                                     "log_dir": "${output_dir}/logs"})
    config_path = write_config(tmp_path, cfg)
    proc = subprocess.run([sys.executable, "-m", RECIPE_MODULE, "--config", str(config_path), "epochs=2"],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    events = read_metrics(out)
    end = events[-1]
    assert end["event"] == "end"
    total_steps = end["steps"]
    train_rows = len(json.loads(data_file.read_text())["train"])
    assert total_steps == 2 * ((train_rows // 4) // 2)
    for e in events:
        assert COMMON_KEYS <= set(e)
    train = [e for e in events if e["event"] == "train"]
    val = [e for e in events if e["event"] == "val"]
    assert train and all(TRAIN_KEYS <= set(e) for e in train)
    assert [e["step"] for e in train] == list(range(2, total_steps + 1, 2))
    assert all(VAL_KEYS <= set(e) for e in val)
    periodic = [e["step"] for e in val if not e["final"]]
    expected = [s for s in range(3, total_steps + 1, 3) if s != total_steps]
    assert periodic == expected  # exactly once per cadence step, with gradient accumulation 2
    finals = [e for e in val if e["final"]]
    assert len(finals) == 1 and finals[0]["step"] == total_steps
    assert all(e["val_examples"] == 8 for e in val)  # max_val_batches 2 x batch_size_val 4
    assert [e["epoch"] for e in train][0] == 0 and [e["epoch"] for e in train][-1] == 1

    # epochs_to_save [] still saves the last epoch, adapter only
    assert not (out / "epoch_0").exists()
    assert (out / "epoch_1" / "adapter_model.safetensors").is_file()
    assert not list((out / "epoch_1").glob("model-*.safetensors"))

    # the W&B offline run holds the logged scalars
    run_dir = (out / "logs" / "wandb" / "latest-run").resolve()
    history = wandb_history(next(run_dir.glob("*.wandb")))
    logged_val = [row for row in history if "val_loss" in row]
    assert [row["global_step"] for row in logged_val] == [e["step"] for e in val]
    assert [row["val_answer_acc"] for row in logged_val] == pytest.approx([e["val_answer_acc"] for e in val])
    logged_train = [row for row in history if "train_answer_loss" in row]
    assert [row["train_answer_loss"] for row in logged_train] == pytest.approx([e["train_answer_loss"] for e in train])


def wandb_history(path: Path) -> list[dict]:
    """History rows of an offline .wandb file, decoded with wandb's own protobuf `Record`.

    wandb 0.31 ships no Python reader for its transaction log, so the container (LevelDB log format:
    a 7-byte ":W&B" header, then 32 KiB blocks of crc32/length/type-framed chunks) is unframed here.
    """
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, header = 32768, 7
    pos, pending, rows = header, b"", []
    while pos + header <= len(data):
        if block - pos % block < header:  # block trailer: too small for a chunk header
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + header:pos + header + length]
        pos += header + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind not in (1, 4):  # FIRST/MIDDLE: the record continues
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


@pytest.mark.training
def test_tune_run_killed_run_resumes_from_saved_epoch(tmp_path, tiny_dir, data_file):
    out = tmp_path / "out"
    cfg = make_config(tiny_dir, data_file, out, epochs=2, batch_size=2, run_val_every_n_steps=0, dataset_val=None,
                      log_every_n_steps=1, shuffle=False)
    config_path = write_config(tmp_path, cfg)
    # `tune run` takes a custom recipe as a path relative to the working directory (it turns it into a dotted
    # module name), so it runs from the repository root; all output goes to tmp_path
    tune = [str(VENV_BIN / "tune"), "run", str(RECIPE_FILE.relative_to(REPO)), "--config", str(config_path)]
    recipe_state = out / "recipe_state" / "recipe_state.pt"
    proc = subprocess.Popen(tune, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        # kill once epoch 1 has started training: the epoch-0 checkpoint is then completely written
        # (torch.save writes in place, so the file's mere existence is not enough)
        while not epoch_started(out, 1) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert recipe_state.exists() and epoch_started(out, 1), \
            "no epoch-0 checkpoint: " + (proc.stderr.read()[-2000:] if proc.poll() is not None else "")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (out / "epoch_1").exists(), "epoch 1 finished before the kill: make the epoch longer"
    first = read_metrics(out)
    steps_per_epoch = max(e["step"] for e in first if e["event"] == "train" and e["epoch"] == 0)
    assert steps_per_epoch == len(json.loads(data_file.read_text())["train"]) // 2

    resumed = subprocess.run(tune + ["resume_from_checkpoint=True"], cwd=REPO, env=subprocess_env(),
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert any(e["epoch"] == 1 for e in first if e["event"] == "train")  # the killed job had logged part of epoch 1
    metrics = read_metrics(out)
    # metrics.jsonl keeps epoch 0 of the killed job and then the resumed run: every step once
    train_steps = [e["step"] for e in metrics if e["event"] == "train"]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 2 * steps_per_epoch
    assert [e for e in metrics if e["epoch"] == 0] == [e for e in first if e["epoch"] == 0]
    events = metrics[len([e for e in first if e["epoch"] == 0]):]
    train = [e for e in events if e["event"] == "train"]
    assert train[0]["epoch"] == 1 and train[0]["step"] == steps_per_epoch + 1
    assert events[-1] == {**events[-1], "event": "end", "steps": 2 * steps_per_epoch}
    assert (out / "epoch_1" / "adapter_model.safetensors").is_file()
    # the LR schedule continues where epoch 0 ended instead of warming up again
    lr_before = [e["lr"] for e in first if e["event"] == "train" and e["epoch"] == 0][-1]
    assert train[0]["lr"] < lr_before


@pytest.mark.training
def test_unknown_config_key_is_an_error(tmp_path, tiny_dir, data_file):
    from omegaconf import OmegaConf

    from cruijff_kit.errors import CkError
    from cruijff_kit.tools.torchtune.custom_recipes import lora_finetune_single_device_val as mod

    cfg = OmegaConf.create(make_config(tiny_dir, data_file, tmp_path / "out", run_val_every_n_step=5))
    with pytest.raises(CkError, match="run_val_every_n_step"):
        mod.LoRAFinetuneRecipeSingleDeviceVal(cfg)
    cfg = OmegaConf.create(make_config(tiny_dir, data_file, tmp_path / "out", epochs_to_save=[3]))
    with pytest.raises(CkError, match="epochs_to_save"):
        mod.LoRAFinetuneRecipeSingleDeviceVal(cfg)


def test_resume_refuses_a_checkpoint_the_job_was_killed_while_saving(tmp_path):
    import torch

    from cruijff_kit.errors import CkError
    from cruijff_kit.tools.torchtune.custom_recipes.lora_finetune_single_device_val import check_resume_checkpoint

    out = tmp_path / "out"
    state = out / "recipe_state" / "recipe_state.pt"
    state.parent.mkdir(parents=True)
    (out / "epoch_0").mkdir()
    torch.save({"epochs_run": 1, "seed": 42}, state)
    check_resume_checkpoint(out)  # epoch 0 saved in full
    (out / "epoch_1").mkdir()  # killed while writing epoch 1's adapter: the recipe state is still epoch 0's
    with pytest.raises(CkError, match=r"epoch_1.*delete .*epoch_1 to resume after epoch 0"):
        check_resume_checkpoint(out)
    torch.save({"epochs_run": 2, "seed": 42}, state)
    check_resume_checkpoint(out)  # epoch 1 saved in full
    state.write_bytes(state.read_bytes()[:len(state.read_bytes()) // 2])  # killed while writing the recipe state
    with pytest.raises(CkError, match=r"recipe_state.pt.*unreadable.*resume_from_checkpoint: False"):
        check_resume_checkpoint(out)
    with pytest.raises(CkError, match="no epoch_<k> checkpoint"):
        check_resume_checkpoint(tmp_path / "empty")


@pytest.mark.training
def test_recipe_checks_the_checkpoint_before_resuming(tmp_path, tiny_dir, data_file):
    from omegaconf import OmegaConf

    from cruijff_kit.errors import CkError
    from cruijff_kit.tools.torchtune.custom_recipes import lora_finetune_single_device_val as mod

    out = tmp_path / "out"
    (out / "epoch_0").mkdir(parents=True)
    (out / "recipe_state").mkdir()
    (out / "recipe_state" / "recipe_state.pt").write_bytes(b"PK\x03\x04 truncated")
    cfg = OmegaConf.create(make_config(tiny_dir, data_file, out, epochs=2, resume_from_checkpoint=True))
    recipe = mod.LoRAFinetuneRecipeSingleDeviceVal(cfg)
    with pytest.raises(CkError, match="recipe_state.pt.*unreadable"):
        recipe.setup(cfg)


def test_answer_positions_find_the_token_after_the_last_assistant_header():
    import torch

    from cruijff_kit.tools.torchtune.custom_recipes.answer_metrics import answer_positions, logits_at

    header = torch.tensor([7, 8, 9])
    tokens = torch.tensor([
        [1, 7, 8, 9, 5, 7, 8, 9, 4, 2, 0],   # two headers: the answer follows the last one
        [1, 3, 3, 7, 8, 9, 6, 2, 0, 0, 0],
        [1, 3, 3, 3, 3, 3, 3, 2, 0, 0, 0],   # no header (e.g. truncated)
        [1, 3, 3, 3, 3, 3, 3, 3, 7, 8, 9],   # header at the very end, no answer token
    ])
    assert answer_positions(tokens, header).tolist() == [8, 6, -1, -1]
    logits = torch.randn(2, 11, 5)
    rows, cols = torch.tensor([0, 1]), torch.tensor([7, 2])
    chunks = list(logits.chunk(4, dim=1))
    assert torch.equal(logits_at(chunks, rows, cols), logits[rows, cols])


@pytest.mark.training
@pytest.mark.parametrize("max_seq_len, chunks", [(64, 0), (400_000, 8)])
def test_chunked_output_only_where_the_logits_are_large(tmp_path, tiny_dir, data_file, max_seq_len, chunks):
    """Small logits: one output and one cross-entropy; large: torchtune's chunked output. Metrics either way."""
    cfg = make_config(tiny_dir, data_file, tmp_path / "out", max_steps_per_epoch=2, run_val_every_n_steps=1,
                      max_val_batches=1, **{"tokenizer.max_seq_len": max_seq_len})
    recipe = run_recipe_in_process(cfg)
    try:
        assert recipe._model.num_output_chunks == chunks
        recipe.train()
    finally:
        recipe.cleanup()
    events = read_metrics(tmp_path / "out")
    train = [e for e in events if e["event"] == "train"]
    val = [e for e in events if e["event"] == "val"]
    assert [e["step"] for e in train] == [1, 2] and all(e["train_answer_loss"] > 0 for e in train)
    assert [e["final"] for e in val] == [False, True] and all(e["val_answer_loss"] > 0 for e in val)


def test_every_stock_recipe_attribute_the_validation_component_touches_is_listed():
    """validation.py reads or replaces stock recipe state only where torchtune_layer.TORCHTUNE_PRIVATE says why."""
    import re

    from cruijff_kit.tools.torchtune.custom_recipes import torchtune_layer

    recipes = Path(torchtune_layer.__file__).parent
    ours = (recipes / "validation.py").read_text()
    stock_dir = Path(torchtune_layer.load_stock_recipe("lora_finetune_single_device.py").__file__).parent
    stock = "".join((stock_dir / name).read_text()
                    for name in ("lora_finetune_single_device.py", "lora_finetune_distributed.py"))
    stock_names = set(re.findall(r"self\.(_\w+)", stock))
    touched = set(re.findall(r"self\.(_\w+)", ours)) & stock_names
    listed = set(re.findall(r"_\w+", " ".join(torchtune_layer.TORCHTUNE_PRIVATE)))
    helpers_of_ours = {"_profiler"}  # StepHook's own attribute: the profiler it wraps (listed as _setup_profiler)
    assert touched - helpers_of_ours <= listed, sorted(touched - helpers_of_ours - listed)
    assert len(touched) >= 8  # the scan finds what it should


@pytest.mark.training
def test_early_stop_ends_once_the_target_held_and_saves(tmp_path, tiny_dir, data_file):
    """early_stop_accuracy 0 is met at every validation: the run ends at the second one (step 6 of 50)."""
    out = tmp_path / "out"
    cfg = make_config(tiny_dir, data_file, out, run_val_every_n_steps=3, early_stop_after=2,
                      early_stop_accuracy=0.0, epochs_to_save=[], epochs=2)
    proc = subprocess.run([sys.executable, "-m", RECIPE_MODULE, "--config", str(write_config(tmp_path, cfg))],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = read_metrics(out)
    end = events[-1]
    assert end["event"] == "end" and end["steps"] == 6 and "2 consecutive validations" in end["stopped_early"]
    val = [e for e in events if e["event"] == "val"]
    assert [e["step"] for e in val] == [3, 6] and val[-1]["final"]  # the stop step's row once, as the final one
    assert (out / "logs" / "val_predictions.jsonl").is_file()
    assert (out / "epoch_0" / "adapter_model.safetensors").is_file()
    # early_stop_after 50: more validations than one epoch has, so the run trains to its end
    out2 = tmp_path / "out2"
    cfg = make_config(tiny_dir, data_file, out2, run_val_every_n_steps=3, early_stop_after=50,
                      early_stop_accuracy=0.0, epochs_to_save=[], epochs=1)
    proc = subprocess.run([sys.executable, "-m", RECIPE_MODULE, "--config", str(write_config(tmp_path, cfg))],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    end = read_metrics(out2)[-1]
    steps_per_epoch = len(json.loads(data_file.read_text())["train"]) // 4
    assert end["event"] == "end" and "stopped_early" not in end and end["steps"] == steps_per_epoch
