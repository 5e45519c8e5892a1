"""The config renderer: seed keys in, torchtune-valid finetune.yaml and an inert, runnable finetune.slurm out."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from cruijff_kit.errors import CkError
from cruijff_kit.settings import load_settings
from cruijff_kit import run_config
from cruijff_kit.tools.torchtune import setup_finetune as sf

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "cruijff_kit" / "tools" / "torchtune" / "setup_finetune.py"
KEYS_DOC = ROOT / ".claude" / "skills" / "scaffold-experiment" / "setup_finetune_keys.md"

# The seed README's example, verbatim (sanity_checks/bit_sequences/README.md, "Configuration File Approach").
SEED_EXAMPLE = """\
# Example: parity_run/setup_finetune.yaml
my_wandb_project: 'bit_sequences_2025-10-28'
my_wandb_run_name: 'parity_run'
dataset_label: 'parity'          # Base name without extension
dataset_ext: '.json'             # Extension
train_on_input: 'true'           # Learn from both input and output
batch_size: 1
epochs: 10
log_every_n_steps: 1
run_val_every_n_steps: 50
save_adapter_weights_only: 'true'
input_formatting: ''
system_prompt: ''
custom_recipe: 'cruijff_kit.tools.torchtune.custom_recipes.lora_finetune_single_device_val'
"""

NASTY = "a b'c\"$(touch PWNED)`touch PWNED`;#x%j"


def isolated_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CK_")}
    env.update(CK_CONFIG=str(tmp_path / "no-settings.yaml"), CK_SCRATCH=str(tmp_path / "scratch"),
               CK_DATA_DIR=str(tmp_path / "data"))
    return env


@pytest.fixture
def settings(tmp_path):
    env = isolated_env(tmp_path)
    env["CK_VENV"] = ""
    return load_settings(env=env, path=tmp_path / "no-settings.yaml")


def render(tmp_path, settings, run_name="parity_run", **setup):
    run_dir = tmp_path / "exp" / run_name
    base = {"dataset_label": "parity", "model": "ck-tiny-llama", "venv": ""}
    return sf.render_run({**base, **setup}, run_dir, settings=settings)


def loaded(result) -> dict:
    return yaml.safe_load(result.files["finetune.yaml"])


def test_seed_readme_example_renders(tmp_path, settings):
    """The seed README's layout: <scratch>/ck-sanity-checks/<experiment>/<run>, outputs <scratch>/ck-outputs/<experiment>/."""
    run_dir = tmp_path / "scratch" / "ck-sanity-checks" / "sanity_check_bit_sequences_2025-10-28" / "parity_run"
    run_dir.mkdir(parents=True)
    (run_dir / "setup_finetune.yaml").write_text(SEED_EXAMPLE)
    result = sf.render_run(None, run_dir, settings=settings)
    cfg = yaml.safe_load((run_dir / "finetune.yaml").read_text())
    out = tmp_path / "scratch" / "ck-outputs" / "sanity_check_bit_sequences_2025-10-28" / "ck-out-parity_run"
    assert result.output_dir == out and cfg["output_dir"] == str(out)
    assert cfg["dataset"]["data_files"] == str(tmp_path / "data" / "parity.json")
    assert (cfg["dataset"]["field"], cfg["dataset_val"]["field"]) == ("train", "validation")
    assert cfg["dataset"]["train_on_input"] is True and cfg["save_adapter_weights_only"] is True
    assert (cfg["epochs"], cfg["batch_size"], cfg["log_every_n_steps"], cfg["run_val_every_n_steps"]) == (10, 1, 1, 50)
    assert cfg["metric_logger"]["project"] == "bit_sequences_2025-10-28" and cfg["metric_logger"]["name"] == "parity_run"
    assert cfg["metric_logger"]["mode"] == "offline" and cfg["metric_logger"]["log_dir"] == "${output_dir}/logs"
    assert cfg["model"]["lora_rank"] == 8 and cfg["model"]["lora_alpha"] == 16
    assert cfg["model"]["_component_"] == "torchtune.models.llama3_2.lora_llama3_2_1b"
    assert (cfg["device"], cfg["dtype"], cfg["optimizer"]["fused"]) == ("cuda", "bf16", True)
    slurm = (run_dir / "finetune.slurm").read_text()
    assert "#SBATCH --gres=gpu:1" in slurm
    assert f"#SBATCH --output={out}/slurm-%j.out" in slurm and f"#SBATCH --error={out}/slurm-%j.out" in slurm
    assert os.access(run_dir / "finetune.slurm", os.X_OK)
    assert "token" not in (run_dir / "finetune.yaml").read_text().replace("tokenizer", "").replace("_tokens", "")
    # the original template's top-level keys
    assert (cfg["my_wandb_project"], cfg["my_wandb_run_name"], cfg["dataset_label"]) == \
        ("bit_sequences_2025-10-28", "parity_run", "parity")
    assert cfg["input_dir"] == str(tmp_path / "data") and cfg["models_dir"] == str(tmp_path / "scratch" / "models")
    # the original's defaults for what the example leaves out
    assert cfg["optimizer"]["lr"] == pytest.approx(1e-4) and cfg["seed"] == 1234 and cfg["tokenizer"]["max_seq_len"] == 2048
    assert "#SBATCH --time=00:15:00" in slurm and "#SBATCH --mem=8G" in slurm


def test_reference_contract_keys_are_all_rendered(tmp_path, settings):
    """Every key of docs/finetune_reference.yaml appears in a rendered finetune.yaml, and no other."""
    reference = yaml.safe_load(re.sub(r"<[^>]*>", "x", (ROOT / "docs" / "finetune_reference.yaml").read_text()))
    cfg = loaded(render(tmp_path, settings, run_val_every_n_steps=10))
    assert set(cfg) == set(reference)
    for section in ("model", "tokenizer", "checkpointer", "dataset", "optimizer", "metric_logger", "dataset_val"):
        assert set(cfg[section]) == set(reference[section]), section


def test_tiny_model_config(tmp_path, settings):
    cfg = loaded(render(tmp_path, settings, run_val_every_n_steps=0, system_prompt="Answer 0 or 1."))
    models = tmp_path / "scratch" / "models" / "ck-tiny-llama"
    assert cfg["model"]["_component_"] == "cruijff_kit.models.tiny.lora_tiny_llama"
    assert cfg["tokenizer"]["special_tokens_path"] == str(models / "original" / "special_tokens.json")
    assert cfg["tokenizer"]["max_seq_len"] == 64
    assert (cfg["device"], cfg["dtype"], cfg["optimizer"]["fused"], cfg["num_threads"]) == ("cpu", "fp32", False, 1)
    assert "dataset_val" not in cfg and cfg["run_val_every_n_steps"] == 0
    assert cfg["dataset"]["new_system_prompt"] == "Answer 0 or 1."


@pytest.mark.slow
def test_rendered_configs_pass_tune_validate(tmp_path, settings):
    """`tune validate` (the CLI) on the tiny config with the recipe additions; the same check in-process
    (torchtune.config.validate, what the CLI calls) for Llama and for a config broken on purpose."""
    from torchtune import config as tt_config
    from torchtune.config._errors import ConfigError

    tune = Path(sys.executable).parent / "tune"
    tiny = render(tmp_path, settings, "tiny", run_val_every_n_steps=10, epochs_to_save="0")
    proc = subprocess.run([str(tune), "validate", str(tiny.run_dir / "finetune.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "well-formed" in proc.stdout, proc.stderr
    llama = render(tmp_path, settings, "llama", model="Llama-3.2-1B-Instruct", run_val_every_n_steps=0)
    tt_config.validate(OmegaConf.load(llama.run_dir / "finetune.yaml"))
    broken = OmegaConf.create(tiny.files["finetune.yaml"].replace("lora_rank:", "lora_rnak:"))
    with pytest.raises(ConfigError, match="lora_rnak"):
        tt_config.validate(broken)


def test_odd_strings_survive_yaml_and_omegaconf(tmp_path, settings):
    prompt = "Say ${oc.env:HOME} and \\${x}\n- item: # 'quoted' \"double\"\ttab null true 123"
    result = render(tmp_path, settings, system_prompt=prompt, run_val_every_n_steps=5,
                    my_wandb_project="proj: #1 ${x}")
    cfg = OmegaConf.to_container(OmegaConf.load(result.run_dir / "finetune.yaml"), resolve=True)
    assert cfg["dataset"]["new_system_prompt"] == prompt == cfg["dataset_val"]["new_system_prompt"]
    assert cfg["metric_logger"]["project"] == "proj: #1 ${x}"
    assert cfg["metric_logger"]["log_dir"] == str(result.output_dir / "logs")


@pytest.mark.parametrize("variant", [
    {},
    {"model": "Llama-3.2-1B-Instruct", "gpus": 2, "custom_recipe": "lora_finetune_distributed",
     "account": "my acct", "partition": "gpu#1", "constraint": "a100|h100", "modules": "anaconda3/2024.6, cuda/12.4",
     "conda_env": "cruijff", "venv": None},
    {"venv": "/opt/my venv", "modules": ["a/1"], "time": "1-00:00:00", "mem": "64g", "cpus": 4},
])
def test_rendered_slurm_passes_bash_n(tmp_path, settings, variant):
    setup = {k: v for k, v in variant.items() if v is not None}
    run_dir = tmp_path / "exp" / "run"
    base = {"dataset_label": "parity", "model": "ck-tiny-llama"}
    if "venv" not in variant or variant["venv"] is not None:
        base["venv"] = ""
    result = sf.render_run({**base, **setup}, run_dir, settings=settings)
    proc = subprocess.run(["bash", "-n", str(run_dir / "finetune.slurm")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    slurm = result.files["finetune.slurm"]
    assert ("#SBATCH --gres=gpu:" in slurm) == (result.values["gpus"] > 0)
    if variant.get("gpus") == 2:
        assert "#SBATCH --gres=gpu:2" in slurm and "tune run --nproc_per_node=2 lora_finetune_distributed" in slurm
        assert '#SBATCH --account="my acct"' in slurm and '#SBATCH --partition="gpu#1"' in slurm
        assert "module load anaconda3/2024.6 || exit 1" in slurm and "conda activate cruijff" in slurm
    else:
        assert "--account" not in slurm and "--partition" not in slurm and "--constraint" not in slurm


def sbatch_argument(line: str) -> str:
    """The value sbatch reads from `#SBATCH --opt=VALUE`: whitespace splits, quotes group, backslash escapes."""
    text = line.split("=", 1)[1]
    out, quote, escape = [], None, False
    for ch in text:
        if escape:
            out.append(ch)
            escape = False
        elif ch == "\\":
            escape = True
        elif quote:
            if ch == quote:
                quote = None
            else:
                out.append(ch)
        elif ch in "\"'":
            quote = ch
        elif ch.isspace() or ch == "#":
            break
        else:
            out.append(ch)
    return "".join(out)


def test_injection_is_inert_and_arguments_arrive_intact(tmp_path, settings):
    """Run name, run dir, output dir and venv full of shell syntax: execute the body with a fake `tune`."""
    weird = tmp_path / "we ird $(touch PWNED) `touch PWNED` 'q\""
    venv = weird / "venv $(touch PWNED)"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text('export PATH="$VIRTUAL_ENV_BIN:$PATH"; export FAKE_VENV=active\n')
    record = tmp_path / "tune-args.json"
    fake_tune = venv / "bin" / "tune"
    fake_tune.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                         f"json.dump({{'argv': sys.argv[1:], 'cwd': os.getcwd(), 'venv': os.environ.get('FAKE_VENV')}},"
                         f" open({str(record)!r}, 'w'))\nsys.exit(7)\n")
    fake_tune.chmod(fake_tune.stat().st_mode | stat.S_IXUSR)
    run_dir = weird / "exp $(touch PWNED)" / "run"
    result = sf.render_run({"dataset_label": "parity", "model": "ck-tiny-llama", "my_wandb_run_name": NASTY,
                            "venv": str(venv), "output_dir_base": str(weird / "out `touch PWNED`"),
                            "account": "acct $(touch PWNED)"}, run_dir, settings=settings)
    slurm = run_dir / "finetune.slurm"
    sbatch_lines = {m.group(1): m.group(0) for m in re.finditer(r"^#SBATCH --([a-z-]+)=.*$", slurm.read_text(), re.M)}
    assert sbatch_argument(sbatch_lines["output"]) == str(result.output_dir).replace("%", "%%") + "/slurm-%j.out"
    assert sbatch_argument(sbatch_lines["account"]) == "acct $(touch PWNED)"
    assert re.fullmatch(r"[A-Za-z0-9._+-]+", sbatch_argument(sbatch_lines["job-name"]))

    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV",)}
    env["VIRTUAL_ENV_BIN"] = str(venv / "bin")
    env["PATH"] = "/usr/bin:/bin"
    proc = subprocess.run(["bash", "finetune.slurm"], cwd=run_dir, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 7, proc.stderr  # the training's exit status
    assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists()
    called = json.loads(record.read_text())
    root, recipe = sf.recipe_invocation(sf.DEFAULT_RECIPE)
    assert called["argv"] == ["run", recipe, "--config", str(run_dir / "finetune.yaml")]
    assert called["cwd"] == root and (Path(root) / recipe).is_file() and called["venv"] == "active"
    assert result.output_dir.name == f"ck-out-{NASTY}"
    assert (result.output_dir / "finetune.yaml").read_text() == (run_dir / "finetune.yaml").read_text()
    assert (result.output_dir / "logs" / "wandb").is_dir()


@pytest.mark.parametrize("setup, field, hint", [
    ({"epoch": 3}, "epoch", "epochs"),
    ({"lora_rnak": 4}, "lora_rnak", "lora_rank"),
    ({"my_wandb_projet": "x"}, "my_wandb_projet", "my_wandb_project"),
])
def test_unknown_key_names_the_closest(tmp_path, settings, setup, field, hint):
    with pytest.raises(CkError) as err:
        render(tmp_path, settings, **setup)
    assert err.value.field == field and f"did you mean {hint}?" in str(err.value)


@pytest.mark.parametrize("setup, field", [
    ({"train_on_input": "maybe"}, "train_on_input"),
    ({"save_adapter_weights_only": "yes please"}, "save_adapter_weights_only"),
    ({"epochs": -1}, "epochs"),
    ({"epochs": "ten"}, "epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"lr": 0}, "lr"),
    ({"lr": "fast"}, "lr"),
    ({"run_val_every_n_steps": -5}, "run_val_every_n_steps"),
    ({"time": "soon"}, "time"),
    ({"mem": "lots"}, "mem"),
    ({"model": "gpt-5"}, "model"),
    ({"dataset_ext": ".csv"}, "dataset_ext"),
    ({"lr_scheduler": "get_linear_schedule_with_warmup"}, "lr_scheduler"),
    ({"dataset_label": None}, "dataset_label"),
    ({"epochs": 2, "epochs_to_save": "0,2"}, "epochs_to_save"),
    ({"gpus": 0, "device": "cuda"}, "gpus"),
    ({"gpus": 2, "custom_recipe": run_config.DEFAULT_RECIPE}, "custom_recipe"),
    ({"account": "a\nb"}, "account"),
    ({"my_wandb_run_name": "x\ny"}, "my_wandb_run_name"),
    ({"partition": "gpu\\x"}, "partition"),
    ({"venv": "/a", "conda_env": "b"}, "venv"),
])
def test_bad_values_are_named(tmp_path, settings, setup, field):
    with pytest.raises(CkError) as err:
        render(tmp_path, settings, **setup)
    assert err.value.field == field
    assert err.value.fix and "\n" not in str(err.value)
    assert not (tmp_path / "exp").exists()  # nothing half-written


def test_seed_booleans_and_strings_are_accepted(tmp_path, settings):
    cfg = loaded(render(tmp_path, settings, train_on_input="false", save_adapter_weights_only="True",
                        save_last_epoch_only="true", epochs="3", lr="3e-4"))
    assert cfg["dataset"]["train_on_input"] is False and cfg["save_adapter_weights_only"] is True
    assert cfg["epochs_to_save"] == [2] and cfg["optimizer"]["lr"] == pytest.approx(3e-4)
    alias = sf.render_run({"dataset_label": "d", "torchtune_model_name": "ck-tiny-llama", "venv": ""},
                          tmp_path / "exp" / "alias", settings=settings)
    assert alias.values["model"] == "ck-tiny-llama"


def test_settings_supply_missing_keys_and_setup_wins(tmp_path):
    env = isolated_env(tmp_path)
    env.update(CK_SLURM_ACCOUNT="acct1", CK_SLURM_PARTITION="gpu", CK_VENV="/opt/venv", CK_MODULES="anaconda3/2024.6")
    settings = load_settings(env=env, path=tmp_path / "no-settings.yaml")
    run_dir = tmp_path / "exp" / "r"
    slurm = sf.render_run({"dataset_label": "d", "model": "ck-tiny-llama"}, run_dir, settings=settings).files["finetune.slurm"]
    assert "#SBATCH --account=acct1" in slurm and "#SBATCH --partition=gpu" in slurm
    assert "source /opt/venv/bin/activate" in slurm and "module load anaconda3/2024.6" in slurm
    slurm = sf.render_run({"dataset_label": "d", "model": "ck-tiny-llama", "conda_env": "ck", "account": ""},
                          run_dir, settings=settings).files["finetune.slurm"]
    assert "conda activate ck" in slurm and "/opt/venv" not in slurm and "--account" not in slurm


def test_scratch_is_inferred_from_the_run_directory_when_not_set(tmp_path):
    env = {k: v for k, v in isolated_env(tmp_path).items() if k != "CK_SCRATCH"}
    unset = load_settings(env={"CK_VENV": ""}, path=tmp_path / "no-settings.yaml")
    run_dir = tmp_path / "scr" / "ck-sanity-checks" / "exp1" / "parity_run"
    result = sf.render_run({"dataset_label": "d", "model": "ck-tiny-llama"}, run_dir, settings=unset)
    assert result.output_dir == tmp_path / "scr" / "ck-outputs" / "exp1" / "ck-out-parity_run"
    assert result.values["models_dir"] == str(tmp_path / "scr" / "models")
    chosen = load_settings(env={**env, "CK_SCRATCH": str(tmp_path / "elsewhere")}, path=tmp_path / "no-settings.yaml")
    result = sf.render_run({"dataset_label": "d", "model": "ck-tiny-llama"}, run_dir, settings=chosen)
    assert result.output_dir == tmp_path / "elsewhere" / "ck-outputs" / "exp1" / "ck-out-parity_run"
    assert result.values["models_dir"] == str(tmp_path / "elsewhere" / "models")


def test_render_is_idempotent(tmp_path, settings):
    first = render(tmp_path, settings)
    assert first.changed == ["setup_finetune.yaml", "finetune.yaml", "finetune.slurm"]
    mtimes = {p: p.stat().st_mtime_ns for p in first.run_dir.iterdir()}
    again = render(tmp_path, settings)
    assert again.changed == [] and again.diff() == ""
    assert {p: p.stat().st_mtime_ns for p in first.run_dir.iterdir()} == mtimes
    changed = sf.render_run({"dataset_label": "parity", "model": "ck-tiny-llama", "venv": "", "epochs": 2},
                            first.run_dir, settings=settings, write=False)
    assert changed.changed == ["setup_finetune.yaml", "finetune.yaml"]
    assert "-epochs: 1\n+epochs: 2\n" in changed.diff()
    assert {p: p.stat().st_mtime_ns for p in first.run_dir.iterdir()} == mtimes


def test_recipe_resolves_with_and_without_import(monkeypatch):
    found = sf.resolve_recipe(sf.DEFAULT_RECIPE)
    monkeypatch.setattr(sf.importlib.util, "find_spec", lambda name: None)
    assert sf.resolve_recipe(sf.DEFAULT_RECIPE) == found
    assert Path(found).is_file()
    assert sf.resolve_recipe("lora_finetune_single_device") == "lora_finetune_single_device"
    with pytest.raises(CkError):
        sf.resolve_recipe("nowhere.at.all")


def test_command_line_by_path_and_module(tmp_path):
    env = isolated_env(tmp_path)
    run_dir = tmp_path / "exp" / "parity_run"
    run_dir.mkdir(parents=True)
    (run_dir / "setup_finetune.yaml").write_text(SEED_EXAMPLE)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--epochs", "3", "--train_on_input=false"], cwd=run_dir,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load((run_dir / "finetune.yaml").read_text())
    assert cfg["epochs"] == 3 and cfg["dataset"]["train_on_input"] is False and "sbatch finetune.slurm" in proc.stdout

    proc = subprocess.run([sys.executable, "-m", "cruijff_kit.tools.torchtune.setup_finetune", "--lora_rnak", "4"],
                          cwd=run_dir, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "did you mean lora_rank?" in proc.stderr

    proc = subprocess.run([sys.executable, "-m", "cruijff_kit.tools.torchtune.setup_finetune", "--help"],
                          cwd=run_dir, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for name in run_config.FIELDS:
        assert f"--{name}" in proc.stdout
    text = " ".join(proc.stdout.split())
    assert "(default: 'instruct_dataset')" in text and "(default: required)" in text


def test_keys_doc_is_generated_from_the_run_contract():
    doc = KEYS_DOC.read_text()
    assert doc == run_config.keys_markdown(), f"regenerate: ck keys --markdown > {KEYS_DOC}"
    for name in run_config.FIELDS:
        assert f"| `{name}` |" in doc


@pytest.mark.slurm
def test_sbatch_reads_quoted_sbatch_lines(tmp_path, settings):
    """Real sbatch: the job log lands at the exact (nasty) output path, and the body stays inert."""
    import time

    weird = tmp_path / "we ird $(touch PWNED) `touch PWNED` 'q\""
    venv = weird / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text('PATH="$(dirname "${BASH_SOURCE[0]}"):$PATH"\n')
    (venv / "bin" / "tune").write_text('#!/bin/bash\necho "fake tune $# args: $*"\n')
    (venv / "bin" / "tune").chmod(0o755)
    result = sf.render_run({"dataset_label": "p", "model": "ck-tiny-llama", "my_wandb_run_name": NASTY,
                            "venv": str(venv), "output_dir_base": str(weird / "out"), "mem": "100M",
                            "time": "00:01:00"}, weird / "exp" / "run", settings=settings)
    result.output_dir.mkdir(parents=True)
    proc = subprocess.run(["sbatch", "--parsable", "finetune.slurm"], cwd=result.run_dir,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    log = result.output_dir / f"slurm-{job_id}.out"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and "exited with status" not in (log.read_text() if log.exists() else ""):
        time.sleep(1)
    text = log.read_text()
    assert "fake tune 4 args: run " in text and "tune run exited with status 0" in text, text
    assert not list(tmp_path.rglob("PWNED"))
