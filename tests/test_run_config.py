"""The run contract (cruijff_kit/run_config.py) and the seed renderer's contract (issue: flag for flag).

Flags only, yaml only, both (precedence per key), experiment_name with and without output_dir_base,
every key the original renderer accepted, and property tests over every key: a wrong-typed or
out-of-bounds value is refused naming the key, at scaffold time and by the recipe's start-up check with
the same message; in-bounds values render a finetune.slurm that passes `bash -n` and a finetune.yaml
torchtune accepts.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from cruijff_kit import run_config as rc
from cruijff_kit.errors import CkError
from cruijff_kit.experiment import Compute, Hyper
from cruijff_kit.settings import load_settings
from cruijff_kit.tools.torchtune import setup_finetune as sf
from test_setup_finetune import SEED_EXAMPLE  # the seed README's example, verbatim

ROOT = Path(__file__).resolve().parents[1]
RENDERER = [sys.executable, "-m", "cruijff_kit.tools.torchtune.setup_finetune"]

# Every flag of the original renderer (seed, October 2025), as `--KEY` in its argparse table.
ORIGINAL_KEYS = (
    "my_wandb_project", "my_wandb_run_name", "input_formatting", "dataset_label", "dataset_ext", "experiment_name",
    "output_dir_base", "input_dir_base", "models_dir", "batch_size", "epochs", "save_adapter_weights_only",
    "save_last_epoch_only", "stash_adapter_weights", "epochs_to_save", "max_steps_per_epoch", "log_every_n_steps",
    "run_val_every_n_steps", "system_prompt", "train_on_input", "lora_rank", "lr", "num_warmup_steps",
    "lr_scheduler", "dataset_type", "time", "gpus", "conda_env", "venv", "modules", "account", "partition",
    "constraint", "custom_recipe",
)
# How the original's users wrote them (booleans as the strings 'true'/'false').
ORIGINAL_VALUES = {
    "my_wandb_project": "proj", "my_wandb_run_name": "r1", "input_formatting": "", "dataset_label": "parity",
    "dataset_ext": ".json", "experiment_name": "exp_a", "batch_size": 2, "epochs": 3,
    "save_adapter_weights_only": "true", "save_last_epoch_only": "false", "stash_adapter_weights": "true",
    "epochs_to_save": "0,2", "max_steps_per_epoch": 5, "log_every_n_steps": 1, "run_val_every_n_steps": 50,
    "system_prompt": "", "train_on_input": "true", "lora_rank": 8, "lr": 1e-4, "num_warmup_steps": 10,
    "lr_scheduler": "get_cosine_schedule_with_warmup", "dataset_type": "instruct_dataset", "time": "00:30:00",
    "gpus": 1, "conda_env": "cruijff", "venv": "", "modules": "2024,Python/3.12.3", "account": "acct",
    "partition": "gpu", "constraint": "a100",
    "custom_recipe": "cruijff_kit.tools.torchtune.custom_recipes.lora_finetune_single_device_val",
}


def isolated_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CK_") and k != "PROJECT"}
    env.update(CK_CONFIG=str(tmp_path / "no-settings.yaml"), CK_SCRATCH=str(tmp_path / "scratch"),
               CK_DATA_DIR=str(tmp_path / "data"), CK_VENV="")
    return env


@pytest.fixture
def settings(tmp_path):
    env = isolated_env(tmp_path)
    return load_settings(env=env, path=tmp_path / "no-settings.yaml")


def cli(args: list[str], cwd: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(RENDERER + args, cwd=cwd, env=isolated_env(tmp_path), capture_output=True, text=True,
                          timeout=120)


# ------------------------------------------------------------------ flags, yaml, both


def test_flags_alone_render_without_a_setup_file(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc = cli(["--dataset_label", "parity", "--dataset_ext", ".json", "--model", "ck-tiny-llama", "--epochs", "2",
                "--experiment_name", "exp_a", "--output_dir_base", str(tmp_path / "outs")], run_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load((run_dir / "finetune.yaml").read_text())
    assert cfg["output_dir"] == str(tmp_path / "outs" / "exp_a" / "ck-out-run")
    assert cfg["epochs"] == 2 and cfg["dataset"]["data_files"] == str(tmp_path / "data" / "parity.json")
    assert not (run_dir / "setup_finetune.yaml").exists()  # the original wrote none either
    missing = cli(["--dataset_label", "p", "--config_file", "nowhere.yaml"], run_dir, tmp_path)
    assert missing.returncode == 2 and "config_file='nowhere.yaml': not found" in missing.stderr


@pytest.mark.parametrize("key, in_file, as_flag, expect", [
    ("epochs", 2, "5", ("epochs",), ),
    ("lr", 0.002, "0.003", ("optimizer", "lr")),
    ("lora_rank", 4, "16", ("model", "lora_rank")),
    ("train_on_input", "true", "false", ("dataset", "train_on_input")),
    ("my_wandb_project", "from_file", "from_flag", ("my_wandb_project",)),
])
def test_flags_win_over_the_file_key_by_key(tmp_path, key, in_file, as_flag, expect):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "setup_finetune.yaml").write_text(yaml.safe_dump(
        {"dataset_label": "parity", "model": "ck-tiny-llama", "batch_size": 3, key: in_file}))
    def rendered(args):
        proc = cli(args, run_dir, tmp_path)
        assert proc.returncode == 0, proc.stderr
        node = yaml.safe_load((run_dir / "finetune.yaml").read_text())
        for part in expect:
            node = node[part]
        return node, yaml.safe_load((run_dir / "finetune.yaml").read_text())
    from_file, cfg = rendered([])
    assert from_file == rc.validate_key(key, in_file) and cfg["batch_size"] == 3
    from_flag, cfg = rendered([f"--{key}", as_flag])
    assert from_flag == rc.validate_key(key, as_flag)
    assert cfg["batch_size"] == 3                         # a key only in the file stays
    assert cfg["log_every_n_steps"] == 5                  # a key in neither: the default


def test_config_file_flag_reads_another_file(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (tmp_path / "other.yaml").write_text("dataset_label: other\nmodel: ck-tiny-llama\nepochs: 4\n")
    proc = cli(["--config_file", str(tmp_path / "other.yaml")], run_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load((run_dir / "finetune.yaml").read_text())
    assert cfg["epochs"] == 4 and cfg["dataset_label"] == "other"


# ------------------------------------------------------------------ the output layout


@pytest.mark.parametrize("setup, where", [
    ({"experiment_name": "exp_a", "output_dir_base": "BASE"}, "BASE/exp_a/ck-out-r"),
    ({"experiment_name": "", "output_dir_base": "BASE"}, "BASE/ck-out-r"),
    ({"output_dir_base": "BASE"}, "BASE/ck-out-r"),                       # outside the scratch layout: no grouping
    ({"experiment_name": "exp_a"}, "SCRATCH/ck-outputs/exp_a/ck-out-r"),
    ({}, "SCRATCH/ck-outputs/ck-out-r"),
])
def test_experiment_name_groups_outputs_under_output_dir_base(tmp_path, settings, setup, where):
    setup = {k: v.replace("BASE", str(tmp_path / "base")) for k, v in setup.items()}
    result = sf.render_run({"dataset_label": "d", "model": "ck-tiny-llama", **setup}, tmp_path / "somewhere" / "r",
                           settings=settings)
    want = Path(where.replace("BASE", str(tmp_path / "base")).replace("SCRATCH", str(tmp_path / "scratch")))
    assert result.output_dir == want
    assert yaml.safe_load(result.files["finetune.yaml"])["output_dir"] == str(want)
    assert f"#SBATCH --output={want}/slurm-%j.out" in result.files["finetune.slurm"]


def test_scaffold_layout_is_unchanged(tmp_path, settings):
    """In the scratch layout the experiment groups by default: <scratch>/ck-outputs/<experiment>/ck-out-<run>."""
    run_dir = tmp_path / "scratch" / "ck-sanity-checks" / "exp_b" / "r"
    result = sf.render_run({"dataset_label": "d", "model": "ck-tiny-llama"}, run_dir, settings=settings)
    assert result.output_dir == tmp_path / "scratch" / "ck-outputs" / "exp_b" / "ck-out-r"


# ------------------------------------------------------------------ every original key


def test_every_original_key_is_accepted(tmp_path, settings):
    assert set(ORIGINAL_KEYS) <= set(rc.FIELDS), set(ORIGINAL_KEYS) - set(rc.FIELDS)
    setup = {**ORIGINAL_VALUES, "model": "Llama-3.2-1B-Instruct", "output_dir_base": str(tmp_path / "o"),
             "input_dir_base": str(tmp_path / "in"), "models_dir": str(tmp_path / "models")}
    assert set(ORIGINAL_VALUES) | {"output_dir_base", "input_dir_base", "models_dir"} == set(ORIGINAL_KEYS)
    result = sf.render_run(setup, tmp_path / "r", settings=settings)
    cfg = yaml.safe_load(result.files["finetune.yaml"])
    assert cfg["output_dir"] == str(tmp_path / "o" / "exp_a" / "ck-out-r1")
    assert cfg["epochs_to_save"] == [0, 2] and cfg["save_adapter_weights_only"] is True
    assert "stash_adapter_weights" not in cfg  # accepted, no effect (said in its help)
    assert "no effect" in rc.FIELDS["stash_adapter_weights"].description
    slurm = result.files["finetune.slurm"]
    assert "module load Python/3.12.3" in slurm and "conda activate cruijff" in slurm
    assert "#SBATCH --account=acct" in slurm and "#SBATCH --time=00:30:00" in slurm


def test_legacy_spelling_of_model(tmp_path, settings):
    result = sf.render_run({"dataset_label": "d", "torchtune_model_name": "ck-tiny-llama"}, tmp_path / "r",
                           settings=settings)
    assert result.config.model == "ck-tiny-llama"
    assert yaml.safe_load(result.files["setup_finetune.yaml"]) == {"dataset_label": "d", "model": "ck-tiny-llama"}
    with pytest.raises(CkError, match="given twice"):
        sf.render_run({"dataset_label": "d", "torchtune_model_name": "ck-tiny-llama", "model": "ck-tiny-llama"},
                      tmp_path / "r", settings=settings)
    with pytest.raises(CkError) as err:
        sf.render_run({"dataset_label": "d", "torchtune_model_name": "gpt-5"}, tmp_path / "r", settings=settings)
    assert err.value.field == "torchtune_model_name" and err.value.value == "gpt-5"  # the key as written


def test_venv_name_is_the_projects_venvs_folder(tmp_path, settings, monkeypatch):
    monkeypatch.setenv("PROJECT", str(tmp_path / "proj"))
    slurm = sf.render_run({"dataset_label": "d", "model": "ck-tiny-llama", "venv": "cruijff"}, tmp_path / "r",
                          settings=settings).files["finetune.slurm"]
    assert f"source {tmp_path}/proj/venvs/cruijff/bin/activate || exit 1" in slurm
    slurm = sf.render_run({"dataset_label": "d", "model": "ck-tiny-llama", "venv": str(tmp_path / "v")},
                          tmp_path / "r", settings=settings).files["finetune.slurm"]
    assert f"source {tmp_path}/v/bin/activate || exit 1" in slurm


def test_model_may_be_an_absolute_directory(tmp_path, settings):
    model_dir = tmp_path / "anywhere" / "ck-tiny-llama"
    cfg = yaml.safe_load(sf.render_run({"dataset_label": "d", "model": str(model_dir)}, tmp_path / "r",
                                       settings=settings).files["finetune.yaml"])
    assert cfg["checkpointer"]["checkpoint_dir"] == str(model_dir)
    assert cfg["tokenizer"]["path"] == str(model_dir / "original" / "tokenizer.model")
    assert cfg["model"]["_component_"] == "cruijff_kit.models.tiny.lora_tiny_llama"
    with pytest.raises(CkError) as err:
        sf.render_run({"dataset_label": "d", "model": str(tmp_path / "my-model")}, tmp_path / "r", settings=settings)
    assert err.value.field == "model" and "has no readable config.json" in str(err.value)  # a folder of no registry name needs one


def test_unknown_and_duplicated_keys(tmp_path, settings):
    with pytest.raises(CkError) as err:
        sf.render_run({"dataset_label": "d", "stash_adapter_weight": "true"}, tmp_path / "r", settings=settings)
    assert str(err.value).startswith("stash_adapter_weight='true': ")  # the value as written, not ''
    assert "did you mean stash_adapter_weights?" in str(err.value)
    proc = cli(["--lora_rnak", "4", "--dataset_label", "d"], tmp_path, tmp_path)
    assert proc.returncode == 2 and "lora_rnak='4': not a setup_finetune key; fix: did you mean lora_rank?" in proc.stderr
    run_dir = tmp_path / "dup"
    run_dir.mkdir()
    (run_dir / "setup_finetune.yaml").write_text("dataset_label: d\nepochs: 2\nepochs: 3\n")
    proc = cli([], run_dir, tmp_path)
    assert proc.returncode == 2 and "'epochs': key given twice (lines 2 and 3)" in proc.stderr and "Traceback" not in proc.stderr
    (run_dir / "setup_finetune.yaml").write_bytes(b"dataset_label: \xff\xfe\n")
    with pytest.raises(CkError, match="not UTF-8"):
        sf.render_run(None, run_dir, settings=settings, write=False)


# ------------------------------------------------------------------ one truth: plan, renderer, ck keys


def test_plan_blocks_are_made_of_the_run_contracts_fields():
    for model in (Hyper, Compute):
        for name, field in model.model_fields.items():
            assert rc.FIELDS[name].description == field.description, name
            assert [m for m in rc.FIELDS[name].metadata if not isinstance(m, rc.Kind)] == \
                [m for m in field.metadata if not isinstance(m, rc.Kind)] or field.default is None, name
    # the one truth for validation every N steps: 0 (off) is allowed everywhere
    assert rc.validate_key("run_val_every_n_steps", 0) == 0
    hyper = {"epochs": 1, "batch_size": 1, "lora_rank": 8, "lr": 1e-4, "num_warmup_steps": 0, "log_every_n_steps": 1,
             "run_val_every_n_steps": 0, "train_on_input": False}
    assert Hyper(**hyper).run_val_every_n_steps == 0
    with pytest.raises(ValueError):
        Hyper(**{**hyper, "lr": 1.5})
    with pytest.raises(CkError):
        rc.validate_key("lr", 1.5)


def test_ck_keys_json_lists_every_key():
    proc = subprocess.run([sys.executable, "-m", "cruijff_kit", "keys", "--json"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    keys = json.loads(proc.stdout)
    assert [k["name"] for k in keys] == list(rc.FIELDS)
    for entry in keys:
        assert entry["type"] and entry["default"] and entry["help"] and entry["group"]
    by_name = {k["name"]: k for k in keys}
    assert by_name["epochs"]["bounds"] == {">=": 1} and by_name["epochs"]["default"] == "1"
    assert by_name["model"]["aliases"] == ["torchtune_model_name"]
    assert by_name["dataset_label"]["required"] is True


def test_differences_doc_names_every_original_key():
    doc = (ROOT / "docs" / "setup_finetune.md").read_text()
    for name in ORIGINAL_KEYS:
        assert f"| `{name}` |" in doc, name


# ------------------------------------------------------------------ properties over the contract

NUMBER_KEYS = [n for n in rc.FIELDS if rc.kind(n).name in ("int", "int|null", "float")]
BOOL_KEYS = [n for n in rc.FIELDS if rc.kind(n).name == "bool"]
CHOICE_KEYS = [n for n in rc.FIELDS if rc.kind(n).name == "choice"]
TEXT_KEYS = [n for n in rc.FIELDS if rc.kind(n).name in ("str", "str|null", "path", "path|null", "text") and n != "model"]


def _out_of_bounds(name: str) -> st.SearchStrategy:
    limits = rc.bounds(name)
    choices = []
    if ">=" in limits:
        choices.append(st.integers(max_value=int(limits[">="]) - 1, min_value=-10**6))
    if ">" in limits:
        choices.append(st.floats(max_value=limits[">"], allow_nan=False, min_value=-1e6))
    if "<" in limits:
        choices.append(st.floats(min_value=limits["<"], allow_nan=False, max_value=1e12).filter(lambda x: x < 2**53))
    if "<=" in limits:
        choices.append(st.integers(min_value=int(limits["<="]) + 1, max_value=10**9))
    return st.one_of(*choices) if choices else st.nothing()


def _wrong_type(name: str) -> st.SearchStrategy:
    kind = rc.kind(name).name
    structured = st.one_of(st.lists(st.integers(), min_size=1, max_size=2),
                           st.dictionaries(st.text(max_size=2), st.integers(), min_size=1, max_size=1))
    if kind in ("int", "int|null"):
        return st.one_of(st.booleans(), structured, st.sampled_from(["ten", "1.5", "3x", "one"]),
                         st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer()))
    if kind == "float":
        return st.one_of(st.booleans(), structured, st.sampled_from(["fast", "nan", "inf", "-inf", "1e-4x"]),
                         st.just(math.nan))
    if kind == "bool":
        return st.one_of(st.integers(), structured, st.sampled_from(["yes", "no", "maybe", "1", "0", "on", "True!"]))
    if kind == "choice":
        options = [str(a) for a in rc.FIELDS[name].annotation.__args__]
        return st.one_of(st.booleans(), structured, st.text(min_size=1, max_size=12).filter(lambda t: t.strip() not in options))
    if kind == "text":  # free text: line breaks are fine, a NUL is not
        return st.one_of(st.booleans(), structured, st.text(max_size=8).map(lambda t: t + "\0"))
    return st.one_of(st.booleans(), structured, st.text(min_size=1, max_size=8).map(lambda t: t + "\nsecond line"))


SPECIAL = {"model": ["gpt-5", "llama", "/abs/not-a-model"], "time": ["soon", "90x", "1:2", "00:61:00", "0-00:00:00"],
           "mem": ["lots", "0", "-4G", "32Q"]}
# (key, bad value, "type" or "bounds")
BAD = st.sampled_from(NUMBER_KEYS + BOOL_KEYS + CHOICE_KEYS + TEXT_KEYS + list(SPECIAL)).flatmap(
    lambda name: st.tuples(st.just(name), st.sampled_from(SPECIAL[name]), st.just("type")) if name in SPECIAL else
    st.one_of(st.tuples(st.just(name), _wrong_type(name), st.just("type")),
              st.tuples(st.just(name), _out_of_bounds(name), st.just("bounds"))))


def _good_finetune_config(tmp_path, settings) -> dict:
    result = sf.render_run({"dataset_label": "d", "model": "ck-tiny-llama", "run_val_every_n_steps": 5,
                            "max_steps_per_epoch": 2, "max_val_batches": 1}, tmp_path / "good", settings=settings,
                           write=False)
    return yaml.safe_load(result.files["finetune.yaml"])


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=BAD)
def test_a_bad_value_is_refused_naming_the_key_at_scaffold_time_and_by_the_recipe(tmp_path, settings, case):
    name, value, why = case
    setup = {"dataset_label": "d", "model": "ck-tiny-llama", name: value}
    with pytest.raises(CkError) as at_scaffold:
        sf.render_run(setup, tmp_path / "exp" / "r", settings=settings, write=False)
    err = at_scaffold.value
    assert err.field == name and err.exit_code == 2 and err.fix and "\n" not in str(err)
    assert err.value == value or (isinstance(value, float) and math.isnan(value))  # the value as written
    # the recipe checks its additions in full, torchtune's own keys by type (their bounds are torchtune's)
    if name in rc.FINETUNE_PLACES and (why == "type" or name in rc.RECIPE_ADDITIONS):
        cfg = _good_finetune_config(tmp_path, settings)
        node = cfg
        *parents, leaf = rc.FINETUNE_PLACES[name]
        for part in parents:
            node = node[part]
        node[leaf] = value
        with pytest.raises(CkError) as at_start:
            rc.check_finetune_config(cfg)
        assert str(at_start.value) == str(err)


def test_the_recipe_start_up_check_uses_the_contract():
    from omegaconf import OmegaConf

    from cruijff_kit.tools.torchtune.custom_recipes import lora_finetune_single_device_val as recipe

    assert rc.FINETUNE_TOP_LEVEL_KEYS <= recipe.VAL_KEYS
    cfg = OmegaConf.create({"epochs": 2, "run_val_every_n_steps": -1, "optimizer": {"lr": 0.1}})
    with pytest.raises(CkError) as err:
        recipe.check_config(cfg, recipe.STOCK_KEYS)
    with pytest.raises(CkError) as same:
        rc.validate_key("run_val_every_n_steps", -1)
    assert str(err.value) == str(same.value)


PRINTABLE = st.text(st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="/\\"), min_size=1,
                    max_size=12).filter(lambda t: t.strip() not in ("", ".", ".."))
GOOD = st.fixed_dictionaries({
    "epochs": st.integers(1, 50), "batch_size": st.integers(1, 512), "lora_rank": st.integers(1, 256),
    "lr": st.floats(1e-8, 0.99), "num_warmup_steps": st.integers(0, 10**5), "seed": st.integers(0, 2**32 - 1),
    "log_every_n_steps": st.integers(1, 1000), "run_val_every_n_steps": st.integers(0, 1000),
    "batch_size_val": st.integers(1, 512), "max_val_batches": st.none() | st.integers(1, 100),
    "max_steps_per_epoch": st.none() | st.integers(1, 100), "gradient_accumulation_steps": st.integers(1, 16),
    "train_on_input": st.sampled_from([True, False, "true", "false", "True"]),
    "save_adapter_weights_only": st.booleans(), "epochs_to_save": st.sampled_from(["all", "none", None]),
    "my_wandb_run_name": PRINTABLE, "experiment_name": st.just("") | PRINTABLE, "my_wandb_project": PRINTABLE,
    "system_prompt": st.text(max_size=20).filter(lambda t: "\0" not in t), "account": st.none() | PRINTABLE,
    "time": st.sampled_from(["00:01:00", "01:30:00", "2-00:00:00"]), "mem": st.sampled_from(["100M", "4G", "1T"]),
    "cpus": st.integers(1, 64), "model": st.sampled_from(["ck-tiny-llama", "Llama-3.2-1B-Instruct"]),
})


@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(setup=GOOD)
def test_in_bounds_values_render_valid_files(tmp_path, settings, setup):
    from omegaconf import OmegaConf
    from torchtune import config as tt_config

    result = sf.render_run({"dataset_label": "d", **setup}, tmp_path / "exp" / "r", settings=settings)
    proc = subprocess.run(["bash", "-n", str(result.run_dir / "finetune.slurm")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.load(result.run_dir / "finetune.yaml")
    tt_config.validate(cfg)  # what `tune validate` runs (the CLI itself: test_rendered_configs_pass_tune_validate)
    rc.check_finetune_config(cfg)
    assert cfg.epochs == setup["epochs"] and cfg.model.lora_alpha == 2 * setup["lora_rank"]


# ------------------------------------------------------------------ the recipe runs on what the seed's commands render


@pytest.mark.training
def test_seed_readme_yaml_plus_flags_render_a_run_the_recipe_completes(tmp_path):
    """The seed README's setup_finetune.yaml as printed, rendered by path like the original, with flags for
    what this machine needs (the tiny model on a CPU, a short run); then `bash finetune.slurm` trains."""
    from sanity_checks.bit_sequences.generator import generate_bit_sequences
    from cruijff_kit.models.tiny import build_tiny_model

    build_tiny_model(tmp_path / "scratch" / "models", seed=0)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "parity.json").write_text(json.dumps(generate_bit_sequences(6, 120, 20, True, 0.0, 7)))
    run_dir = tmp_path / "scratch" / "ck-sanity-checks" / "sanity_check_bit_sequences_2025-10-28" / "parity_run"
    run_dir.mkdir(parents=True)
    (run_dir / "setup_finetune.yaml").write_text(SEED_EXAMPLE)
    env = isolated_env(tmp_path)
    env["CK_VENV"] = sys.prefix if sys.prefix != sys.base_prefix else ""
    script = ROOT / "cruijff_kit" / "tools" / "torchtune" / "setup_finetune.py"
    proc = subprocess.run([sys.executable, str(script), "--torchtune_model_name", "ck-tiny-llama", "--epochs", "1",
                           "--max_steps_per_epoch", "2", "--run_val_every_n_steps", "1", "--max_val_batches", "1"],
                          cwd=run_dir, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "scratch" / "ck-outputs" / "sanity_check_bit_sequences_2025-10-28" / "ck-out-parity_run"
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    proc = subprocess.run(["bash", "finetune.slurm"], cwd=run_dir, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    events = [json.loads(line)["event"] for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert "val" in events and events[-1] == "end"


@pytest.mark.parametrize("output_root", ["out/plan_test", "elsewhere/custom_outputs"])
def test_scaffold_setup_lands_where_the_plan_says(tmp_path, settings, output_root):
    """ck scaffold writes output_dir_base + experiment_name so the renderer's layout gives the plan's output dir."""
    from test_experiment import plan_dict

    from cruijff_kit.experiment import Experiment
    from cruijff_kit.scaffold import setup_for_run

    exp = Experiment.from_plan_dict({**plan_dict(tmp_path), "output_root": str(tmp_path / output_root)})
    run = exp.runs[0]
    setup = setup_for_run(exp, run, settings)
    assert setup["experiment_name"] == ("plan_test" if output_root.endswith("plan_test") else "")
    result = sf.render_run(setup, exp.run_dir(run.name), settings=settings, write=False)
    assert result.output_dir == exp.run_output_dir(run.name)
