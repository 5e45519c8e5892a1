"""Render a run directory's finetune.yaml and finetune.slurm from its setup_finetune.yaml.

Library:

    result = render_run({"dataset_label": "my_data", "epochs": 3, ...}, run_dir)   # or a yaml path / None
    result.output_dir, result.files["finetune.slurm"], result.changed

Command line, from a run directory (the seed README's `python ../../tools/torchtune/setup_finetune.py`):

    python -m cruijff_kit.tools.torchtune.setup_finetune [--KEY VALUE ...]
    python /path/to/cruijff_kit/tools/torchtune/setup_finetune.py [--KEY VALUE ...]

Every key, its type, default and meaning is in KEYS, the one table used by the file reader, the
command-line flags, `--help`, the validation and the key reference in the scaffold-experiment
skill. Keys missing from setup_finetune.yaml take their defaults, some of them from
cruijff_kit.settings (models_dir, data_dir, SLURM account/partition/constraint, environment).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib.util
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

if __package__ in (None, ""):  # run by path: make the checkout importable without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import jinja2
import yaml

from cruijff_kit.errors import CkError
from cruijff_kit.fsutil import atomic_write_text
from cruijff_kit.models.registry import MODELS, get_model
from cruijff_kit.settings import normalize_slurm_mem, normalize_slurm_time

SETUP_FILE = "setup_finetune.yaml"
FINETUNE_YAML = "finetune.yaml"
FINETUNE_SLURM = "finetune.slurm"
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
PACKAGE_DIR = Path(__file__).resolve().parents[2]  # .../cruijff_kit
DEFAULT_RECIPE = "cruijff_kit.tools.torchtune.custom_recipes.lora_finetune_single_device_val"
LR_SCHEDULERS = ("get_cosine_schedule_with_warmup",)  # the ones torchtune 0.6.1 ships
DATASET_TYPES = ("instruct_dataset",)
DATASET_EXTS = (".json",)
COMMAND = "python -m cruijff_kit.tools.torchtune.setup_finetune"


# ---------------------------------------------------------------------------------------------
# Value parsers: (value, key) -> normalized value, or CkError naming the key, the value and a fix
# ---------------------------------------------------------------------------------------------

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NULL = {"", "null", "none", "~"}


def parse_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise CkError(key, value, "not a boolean", f"write {key}: 'true' or {key}: 'false'")


def _parse_int(value: Any, key: str, minimum: int) -> int:
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        number = int(value)
    if number is None:
        raise CkError(key, value, "not a whole number", f"write a whole number >= {minimum}")
    if number < minimum:
        raise CkError(key, value, f"must be >= {minimum}", f"write a whole number >= {minimum}")
    return number


def int_at_least(minimum: int) -> Callable[[Any, str], int]:
    return lambda value, key: _parse_int(value, key, minimum)


def optional_int_at_least(minimum: int) -> Callable[[Any, str], int | None]:
    def parse(value: Any, key: str) -> int | None:
        if value is None or (isinstance(value, str) and value.strip().lower() in _NULL):
            return None
        return _parse_int(value, key, minimum)
    return parse


def parse_positive_float(value: Any, key: str) -> float:
    # PyYAML reads `3e-4` (no dot) as a string, so strings are normal here
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise CkError(key, value, "not a number", "write e.g. 3e-4") from None
    if not number > 0 or number == float("inf"):
        raise CkError(key, value, "must be a positive number", "write e.g. 3e-4")
    return number


def _as_text(value: Any, key: str) -> str:
    """None as '', numbers as their text (YAML may read `2025` as an int); containers and booleans refused."""
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple, set, bool)):
        raise CkError(key, value, "not a string", f"write {key}: 'text'")
    return str(value)


def parse_line(value: Any, key: str) -> str:
    """A one-line string, stripped."""
    text = _as_text(value, key)
    if any(ch in text for ch in "\n\r\0"):
        raise CkError(key, value, "must be a single line", "remove the line breaks")
    return text.strip()


def parse_text(value: Any, key: str) -> str:
    """Free text (system_prompt): line breaks allowed, NUL not."""
    text = _as_text(value, key)
    if "\0" in text:
        raise CkError(key, value, "contains a NUL character", "remove it")
    return text


def parse_optional_line(value: Any, key: str) -> str | None:
    return parse_line(value, key) or None


def parse_name(value: Any, key: str) -> str:
    text = parse_line(value, key)
    if not text or "/" in text or text in (".", ".."):
        raise CkError(key, value, "must be a non-empty name without '/'", f"e.g. {key}: my_run")
    return text


def parse_path(value: Any, key: str) -> str:
    """A path as written (relative paths are resolved against the run directory later)."""
    text = parse_line(value, key)
    if not text:
        raise CkError(key, value, "empty path", f"give {key} a directory")
    return os.path.expandvars(os.path.expanduser(text))


def parse_optional_path(value: Any, key: str) -> str | None:
    text = parse_line(value, key)
    return os.path.expandvars(os.path.expanduser(text)) if text else None


def choice(options: tuple[str, ...]) -> Callable[[Any, str], str]:
    def parse(value: Any, key: str) -> str:
        text = parse_line(value, key)
        if text not in options:
            close = difflib.get_close_matches(text, options, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]}?" if close else f"use one of: {', '.join(options)}"
            raise CkError(key, value, "not supported", hint)
        return text
    return parse


def parse_model(value: Any, key: str) -> str:
    text = parse_line(value, key)
    get_model(text)  # CkError listing the supported models
    return text


def parse_modules(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        items = [m.strip() for m in value.split(",")]
        items = [m for m in items if m]
    elif isinstance(value, (list, tuple)):
        items = [parse_line(m, key) for m in value]
    else:
        raise CkError(key, value, "not a list of modules", "write e.g. modules: '2024,Python/3.12.3'")
    if any(not m or re.search(r"\s", m) for m in items):
        raise CkError(key, value, "module names must be non-empty and without spaces", "separate modules by commas")
    return items


def parse_epochs_to_save(value: Any, key: str) -> list[int] | str | None:
    """'all', 'none' (= only the last epoch, which is always saved), a comma list, a list, or null."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "null", "~"):
            return None
        if text == "all":
            return "all"
        if text == "none":
            return []
        items: list[Any] = [x for x in text.split(",") if x.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    else:
        raise CkError(key, value, "not a list of epochs", "write 'all', 'none' or e.g. '0,4,9'")
    try:
        epochs = sorted({_parse_int(x, key, 0) for x in items})
    except CkError:
        raise CkError(key, value, "not a list of epochs (numbered from 0)", "write 'all', 'none' or e.g. '0,4,9'") from None
    return epochs


# ---------------------------------------------------------------------------------------------
# The one table of keys
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Derived:
    """A default computed at render time; `text` is what --help and the docs say about it."""

    text: str
    compute: Callable[["_Context"], Any]


REQUIRED = object()


@dataclass(frozen=True)
class Key:
    name: str
    type: str                       # shown in --help and the docs
    parse: Callable[[Any, str], Any]
    default: Any                    # a value, REQUIRED, or Derived
    help: str
    group: str

    def default_text(self) -> str:
        if self.default is REQUIRED:
            return "required"
        if isinstance(self.default, Derived):
            return self.default.text
        return "null" if self.default is None else repr(self.default)


@dataclass
class _Context:
    values: dict[str, Any]           # resolved so far, in table order
    run_dir: Path
    settings: Any                    # cruijff_kit.settings.Settings (loaded lazily)

    def setting(self, name: str) -> Any:
        if self.settings is None:
            from cruijff_kit.settings import load_settings
            self.settings = load_settings()
        return getattr(self.settings, name)

    def source(self, name: str) -> str:
        self.setting(name)  # loads the settings
        return _setting_source(self.settings, name)


def _from_settings(name: str, text: str | None = None) -> Derived:
    return Derived(text or f"settings {name} (`ck config set {name} ...`)", lambda c: c.setting(name))


def _model_spec(c: _Context):
    return get_model(c.values["model"])


def _default_dtype(c: _Context) -> str:
    spec = _model_spec(c)
    if c.values["device"] == spec.device:
        return spec.dtype
    return "fp32" if c.values["device"] == "cpu" else "bf16"


EXPERIMENT_ROOTS = ("ck-sanity-checks", "ck-experiments")


def _scratch(c: _Context) -> Path:
    """The settings' scratch, unless that is only the default (./ck-scratch of the current directory)
    and the run directory sits in the scratch layout <scratch>/ck-sanity-checks/<experiment>/<run>."""
    layout = c.run_dir.parent.parent
    if layout.name in EXPERIMENT_ROOTS and c.source("scratch") == "default":
        return layout.parent
    return Path(c.setting("scratch"))


def _default_models_dir(c: _Context) -> str:
    if c.source("models_dir") == "default":
        return str(_scratch(c) / "models")
    return str(c.setting("models_dir"))


def _default_output_dir_base(c: _Context) -> str:
    return str(_scratch(c) / "ck-outputs" / c.values["experiment_name"])


_M = "W&B and names"
_D = "dataset"
_T = "model and training"
_C = "checkpoints and outputs"
_S = "SLURM job and environment"

KEYS: tuple[Key, ...] = (
    # -- names
    Key("my_wandb_project", "str", parse_line, _from_settings("wandb_project"),
        "W&B project the run logs to (offline; sync later with `wandb sync`)", _M),
    Key("my_wandb_run_name", "str", parse_name, Derived("the run directory's name", lambda c: c.run_dir.name),
        "run name: W&B run name, SLURM job name and the output folder ck-out-<name>", _M),
    Key("experiment_name", "str", parse_name,
        Derived("the experiment directory's name (the run directory's parent)", lambda c: c.run_dir.parent.name),
        "groups outputs: the default output_dir_base is <scratch>/ck-outputs/<experiment_name>", _M),
    # -- dataset
    Key("dataset_label", "str", parse_name, REQUIRED,
        "dataset file name without extension (my_data for my_data.json)", _D),
    Key("dataset_ext", "str", choice(DATASET_EXTS), ".json",
        "dataset file extension; the file holds top-level 'train' and 'validation' lists", _D),
    Key("input_dir_base", "path", parse_path, _from_settings("data_dir"),
        "directory holding the dataset file", _D),
    Key("input_formatting", "str", parse_line, "",
        "optional sub-folder of input_dir_base holding the file ('' = none)", _D),
    Key("dataset_type", "str", choice(DATASET_TYPES), "instruct_dataset",
        "torchtune dataset builder (torchtune.datasets.<dataset_type>)", _D),
    Key("train_on_input", "bool", parse_bool, False,
        "also train on the input tokens, not only the answer", _D),
    Key("system_prompt", "str", parse_text, "",
        "system prompt added to every example ('' = none)", _D),
    # -- model and training
    Key("model", "str", parse_model, "Llama-3.2-1B-Instruct",
        f"model folder under models_dir; one of {', '.join(MODELS)} (alias: torchtune_model_name)", _T),
    Key("models_dir", "path", parse_path,
        Derived("settings models_dir (`ck config set models_dir ...`; by default <scratch>/models)", _default_models_dir),
        "directory holding one folder per model (Hugging Face layout)", _T),
    Key("lora_rank", "int", int_at_least(1), 8, "LoRA rank; lora_alpha is always 2 x lora_rank", _T),
    Key("epochs", "int", int_at_least(1), 1, "passes over the training split", _T),
    Key("batch_size", "int", int_at_least(1), 4, "training examples per step", _T),
    Key("gradient_accumulation_steps", "int", int_at_least(1), 1, "batches per optimizer step", _T),
    Key("max_steps_per_epoch", "int|null", optional_int_at_least(1), None,
        "stop each epoch after this many steps (null = the whole split)", _T),
    Key("lr", "float", parse_positive_float, 3e-4, "AdamW learning rate", _T),
    Key("lr_scheduler", "str", choice(LR_SCHEDULERS), "get_cosine_schedule_with_warmup",
        "torchtune.training.lr_schedulers.<lr_scheduler>", _T),
    Key("num_warmup_steps", "int", int_at_least(0), 100, "learning-rate warmup steps", _T),
    Key("seed", "int", int_at_least(0), 42, "random seed of torchtune (shuffling, LoRA init)", _T),
    Key("log_every_n_steps", "int", int_at_least(1), 5, "log train metrics every N steps", _T),
    Key("run_val_every_n_steps", "int", int_at_least(0), 0,
        "validate every N steps on the file's 'validation' split (0 = no validation)", _T),
    Key("batch_size_val", "int", int_at_least(1), 64, "validation examples per batch", _T),
    Key("max_val_batches", "int|null", optional_int_at_least(1), None,
        "validate on at most this many batches (null = the whole split)", _T),
    Key("device", "str", choice(("cpu", "cuda")), Derived("the model's (registry)", lambda c: _model_spec(c).device),
        "torch device", _T),
    Key("dtype", "str", choice(("fp32", "bf16")),
        Derived("the model's on its device, else fp32 on cpu / bf16 on cuda", _default_dtype), "training dtype", _T),
    Key("num_threads", "int|null", optional_int_at_least(1),
        Derived("1 on cpu, null (torch's default) on cuda", lambda c: 1 if c.values["device"] == "cpu" else None),
        "CPU threads torch uses", _T),
    Key("max_seq_len", "int|null", optional_int_at_least(1),
        Derived("the model's (registry)", lambda c: _model_spec(c).max_seq_len),
        "tokenizer truncation length (null = none)", _T),
    # -- checkpoints and outputs
    Key("save_adapter_weights_only", "bool", parse_bool, True,
        "save only the LoRA adapter at each checkpoint, not the merged model", _C),
    Key("save_last_epoch_only", "bool", parse_bool, False,
        "checkpoint only the last epoch (same as epochs_to_save: none)", _C),
    Key("epochs_to_save", "list|all|none|null", parse_epochs_to_save, None,
        "epochs to checkpoint, numbered from 0 as torchtune does: 'all', 'none', '0,4,9' (the last epoch is always saved; null = all)", _C),
    Key("output_dir_base", "path", parse_path,
        Derived("<scratch>/ck-outputs/<experiment_name>; scratch: the settings' or, when that is unset, "
                "the one the run directory sits in (<scratch>/ck-sanity-checks/<experiment>/<run>)", _default_output_dir_base),
        "the run writes to <output_dir_base>/ck-out-<my_wandb_run_name>", _C),
    Key("custom_recipe", "str", parse_line, DEFAULT_RECIPE,
        "recipe run by `tune run`: a dotted module, a .py path or a torchtune recipe name", _C),
    # -- SLURM and environment
    Key("time", "HH:MM:SS", normalize_slurm_time, _from_settings("slurm_time"), "#SBATCH --time", _S),
    Key("gpus", "int", int_at_least(0), Derived("1 if device is cuda, else 0", lambda c: 1 if c.values["device"] == "cuda" else 0),
        "GPUs (#SBATCH --gres=gpu:N, omitted when 0; >1 runs `tune run --nproc_per_node`)", _S),
    Key("cpus", "int", int_at_least(1), 1, "#SBATCH --cpus-per-task", _S),
    Key("mem", "size", normalize_slurm_mem, _from_settings("slurm_mem"), "#SBATCH --mem, e.g. 32G", _S),
    Key("account", "str|null", parse_optional_line, _from_settings("slurm_account"), "#SBATCH --account (omitted when unset)", _S),
    Key("partition", "str|null", parse_optional_line, _from_settings("slurm_partition"), "#SBATCH --partition (omitted when unset)", _S),
    Key("constraint", "str|null", parse_optional_line, _from_settings("slurm_constraint"), "#SBATCH --constraint (omitted when unset)", _S),
    Key("conda_env", "str|null", parse_optional_line, _from_settings("conda_env"),
        "conda environment activated before training (not with venv)", _S),
    Key("venv", "path|null", parse_optional_path, _from_settings("venv"),
        "virtualenv activated before training: <venv>/bin/activate (not with conda_env)", _S),
    Key("modules", "list", parse_modules, _from_settings("modules"),
        "environment modules loaded first, comma separated ('2024,Python/3.12.3')", _S),
)
KEYS_BY_NAME: dict[str, Key] = {k.name: k for k in KEYS}
ALIASES = {"torchtune_model_name": "model"}
PATH_KEYS = ("input_dir_base", "models_dir", "output_dir_base", "venv")


def check_key(name: Any) -> str:
    """The canonical key for `name`, or CkError naming the closest known key."""
    text = str(name)
    if text in KEYS_BY_NAME:
        return text
    if text in ALIASES:
        return ALIASES[text]
    close = difflib.get_close_matches(text, list(KEYS_BY_NAME) + list(ALIASES), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}?" if close else f"known keys: `{COMMAND} --help`"
    raise CkError(text, "", "unknown setup_finetune key", hint)


def canonical_setup(setup: Mapping[str, Any]) -> dict[str, Any]:
    """Keys checked and aliases mapped; two spellings of one key is an error."""
    out: dict[str, Any] = {}
    for name, value in setup.items():
        key = check_key(name)
        if key in out:
            raise CkError(str(name), value, f"given twice (also as {key})", "keep one of them")
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# Resolution: explicit values parsed, defaults filled in, cross-key checks
# ---------------------------------------------------------------------------------------------


def resolve_setup(setup: Mapping[str, Any], run_dir: str | os.PathLike, settings: Any = None) -> dict[str, Any]:
    """Every key of KEYS with its final value. Relative paths are taken from `run_dir`."""
    run_dir = Path(run_dir).resolve()
    given = canonical_setup(setup)
    ctx = _Context({}, run_dir, settings)
    for key in KEYS:
        if key.name in given:
            value = key.parse(given[key.name], key.name)
        elif key.default is REQUIRED:
            raise CkError(key.name, None, "is required", f"add `{key.name}: ...` to {SETUP_FILE} ({key.help})")
        elif isinstance(key.default, Derived):
            raw = key.default.compute(ctx)
            value = None if raw is None else key.parse(raw, key.name)
        else:
            value = key.default
        if key.name in PATH_KEYS and value is not None:
            value = str((run_dir / value).resolve()) if not os.path.isabs(value) else os.path.normpath(value)
        ctx.values[key.name] = value
    values = ctx.values
    _choose_environment(values, given, ctx)
    _check_consistency(values, given)
    return values


def _choose_environment(values: dict[str, Any], given: Mapping[str, Any], ctx: _Context) -> None:
    """venv and conda_env exclude each other: one named in setup_finetune.yaml beats the other's
    setting, and a conda_env set in the settings beats the venv that defaults to the one running ck."""
    if not (values["venv"] and values["conda_env"]):
        return
    if "venv" in given and "conda_env" not in given:
        values["conda_env"] = None
    elif "conda_env" in given and "venv" not in given:
        values["venv"] = None
    elif not given.keys() & {"venv", "conda_env"} and _setting_source(ctx.settings, "venv") == "default":
        values["venv"] = None
    else:
        raise CkError("venv", values["venv"], f"set together with conda_env={values['conda_env']!r}",
                      "keep one: set the other to '' in setup_finetune.yaml or unset it with `ck config`")


def _setting_source(settings: Any, key: str) -> str:
    try:
        return settings.source(key)
    except (AttributeError, KeyError):
        return "unknown"


def settings_environment(settings: Any) -> tuple[str | None, str | None]:
    """(venv, conda_env) that the settings ask for, with the same precedence as `_choose_environment`."""
    values = {"venv": settings.venv, "conda_env": settings.conda_env}
    _choose_environment(values, {}, _Context({}, Path("."), settings))
    return values["venv"], values["conda_env"]


def _check_consistency(values: dict[str, Any], given: Mapping[str, Any]) -> None:
    if values["device"] == "cuda" and values["gpus"] == 0:
        raise CkError("gpus", 0, "device is cuda but no GPU is requested", "set gpus: 1, or device: cpu")
    if values["gpus"] > 1 and "single_device" in values["custom_recipe"]:
        raise CkError("gpus", values["gpus"], f"recipe {values['custom_recipe']} trains on one device",
                      "set gpus: 1, or a distributed custom_recipe")
    if values["save_last_epoch_only"] and given.get("epochs_to_save") is not None and values["epochs_to_save"] is not None:
        raise CkError("epochs_to_save", values["epochs_to_save"], "set together with save_last_epoch_only: true",
                      "keep one of them")
    saved = values["epochs_to_save"]
    if isinstance(saved, list) and saved and saved[-1] >= values["epochs"]:
        raise CkError("epochs_to_save", saved, f"names an epoch after the last one ({values['epochs'] - 1}; epochs count from 0)",
                      f"use epochs between 0 and {values['epochs'] - 1}")


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _escape_interpolation(text: str) -> str:
    """OmegaConf (which torchtune loads configs with) would resolve `${...}` in a value: escape it."""
    return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)


def yaml_value(value: Any) -> str:
    """One YAML value in flow style, for pasting after `key: ` in a template line."""
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        value = _escape_interpolation(value)
    style = '"' if isinstance(value, str) and not value.isprintable() else None
    text = yaml.safe_dump(value, default_flow_style=True, default_style=style, width=float("inf"),
                          allow_unicode=True, sort_keys=False).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")].rstrip()
    if "\n" in text:  # cannot happen with width=inf and double quotes; guard the template anyway
        raise AssertionError(f"multi-line YAML value {text!r}")
    return text


def sbatch_value(value: Any, key: str) -> str:
    """A value for an `#SBATCH --opt=VALUE` line.

    sbatch splits those lines at whitespace, strips quotes, treats backslash as an escape and `#`
    as a comment. A value with whitespace, quotes or `#` is double-quoted (inner `"` escaped);
    control characters and backslashes (which also switch off %j in file names) are refused.
    """
    text = str(value)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text) or "\\" in text:
        raise CkError(key, value, "cannot go on an #SBATCH line (line break, control character or backslash)",
                      "rename it without those characters")
    if re.search(r"[\s\"'#]", text):
        return '"' + text.replace('"', '\\"') + '"'
    return text


def job_name(run_name: str) -> str:
    """SLURM job names are labels: keep them to characters every tool prints cleanly."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", run_name)[:200] or "finetune"


def resolve_recipe(name: str) -> str:
    """The recipe's .py file (a dotted module or a path), or the name of a torchtune built-in recipe."""
    if name.endswith(".py") or "/" in name:
        path = Path(name).expanduser()
        if not path.is_file():
            raise CkError("custom_recipe", name, "no such recipe file", "give an existing .py file or a dotted module")
        return str(path.resolve())
    if "." not in name:
        return name  # a torchtune built-in recipe, e.g. lora_finetune_single_device
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin and spec.origin.endswith(".py"):
        return str(Path(spec.origin).resolve())
    if name.startswith("cruijff_kit."):
        # our own recipe, not importable right now (e.g. not installed yet): its place in the package
        return str(PACKAGE_DIR.joinpath(*name.split(".")[1:]).with_suffix(".py"))
    raise CkError("custom_recipe", name, "module not found", f"use {DEFAULT_RECIPE} or a path to a recipe .py file")


def recipe_invocation(name: str) -> tuple[str | None, str]:
    """(directory to run `tune run` in, its recipe argument).

    torchtune 0.6.1 turns a custom recipe path into a module name relative to the current directory
    (a/b.py -> a.b) and runs that module, so an absolute path cannot work: run it from the recipe's
    import root (the directory above its top-level package) with the path relative to it.
    """
    recipe = resolve_recipe(name)
    if not recipe.endswith(".py"):
        return None, recipe
    path = Path(recipe)
    root = path.parent
    while (root / "__init__.py").is_file():
        root = root.parent
    return str(root), str(path.relative_to(root))


def run_paths(values: Mapping[str, Any]) -> dict[str, Path]:
    spec = get_model(values["model"])
    model_dir = Path(values["models_dir"]) / spec.name
    input_dir = Path(values["input_dir_base"])
    if values["input_formatting"]:
        input_dir = input_dir / values["input_formatting"]
    return {
        "output_dir": Path(values["output_dir_base"]) / f"ck-out-{values['my_wandb_run_name']}",
        "data_file": input_dir / f"{values['dataset_label']}{values['dataset_ext']}",
        "model_dir": model_dir,
        "tokenizer": model_dir / spec.tokenizer_file,
        "special_tokens": model_dir / spec.special_tokens_file if spec.special_tokens_file else None,
    }


@functools.lru_cache(maxsize=None)
def _jinja() -> jinja2.Environment:
    """One environment per process, so each template is compiled once, not once per run rendered."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    env.filters["y"] = yaml_value
    env.filters["q"] = lambda value: shlex.quote(str(value))
    return env


def render_finetune_yaml(values: Mapping[str, Any]) -> str:
    spec = get_model(values["model"])
    paths = run_paths(values)
    epochs_to_save = values["epochs_to_save"]
    if values["save_last_epoch_only"]:
        epochs_to_save = [values["epochs"] - 1]  # torchtune numbers epochs from 0
    text = _jinja().get_template("finetune.yaml.j2").render(
        v=values, spec=spec, paths=paths, epochs_to_save=epochs_to_save,
        lora_alpha=2 * values["lora_rank"], fused=values["device"] == "cuda",
        lr_scheduler=f"torchtune.training.lr_schedulers.{values['lr_scheduler']}",
        dataset_component=f"torchtune.datasets.{values['dataset_type']}",
        system_prompt=values["system_prompt"] or None, command=COMMAND,
    )
    _check_yaml(text, values, paths)
    return text


def _check_yaml(text: str, values: Mapping[str, Any], paths: Mapping[str, Any]) -> None:
    """The rendered file must read back to what was meant (guards the template, not the user)."""
    loaded = yaml.safe_load(text)
    expected = {
        ("output_dir",): _escape_interpolation(str(paths["output_dir"])),
        ("dataset", "data_files"): _escape_interpolation(str(paths["data_file"])),
        ("metric_logger", "name"): _escape_interpolation(values["my_wandb_run_name"]),
        ("epochs",): values["epochs"],
    }
    for where, want in expected.items():
        got = loaded
        for part in where:
            got = got[part]
        if got != want:
            raise AssertionError(f"finetune.yaml template renders {'.'.join(where)} as {got!r}, not {want!r}")


def render_finetune_slurm(values: Mapping[str, Any], run_dir: Path) -> str:
    paths = run_paths(values)
    output_dir = paths["output_dir"]
    slurm_log = str(output_dir).replace("%", "%%") + "/slurm-%j.out"
    sbatch = {
        "job_name": sbatch_value(job_name(values["my_wandb_run_name"]), "my_wandb_run_name"),
        "time": sbatch_value(values["time"], "time"),
        "mem": sbatch_value(values["mem"], "mem"),
        "output": sbatch_value(slurm_log, "output_dir_base"),
    }
    for key in ("account", "partition", "constraint"):
        sbatch[key] = sbatch_value(values[key], key) if values[key] else None
    recipe_root, recipe = recipe_invocation(values["custom_recipe"])
    return _jinja().get_template("finetune.slurm.j2").render(
        v=values, sbatch=sbatch, run_dir=str(run_dir), output_dir=str(output_dir), recipe=recipe, recipe_root=recipe_root,
        environment=environment_lines(values), command=COMMAND,
    )


def environment_lines(values: Mapping[str, Any]) -> list[str]:
    """Shell lines that load modules and activate the venv or conda environment (quoted)."""
    lines = []
    if values["modules"]:
        lines.append("module purge")
        lines += [f"module load {shlex.quote(m)} || exit 1" for m in values["modules"]]
    if values["venv"]:
        lines.append(f"source {shlex.quote(str(Path(values['venv']) / 'bin' / 'activate'))} || exit 1")
    elif values["conda_env"]:
        lines.append('eval "$(conda shell.bash hook)" || exit 1')
        lines.append(f"conda activate {shlex.quote(values['conda_env'])} || exit 1")
    return lines


def dump_setup(setup: Mapping[str, Any]) -> str:
    """setup_finetune.yaml text for a mapping of keys (table order; unknown keys refused)."""
    given = canonical_setup(setup)
    ordered = {k.name: given[k.name] for k in KEYS if k.name in given}
    header = (f"# Settings of this run; keys and defaults: `{COMMAND} --help`.\n"
              f"# After editing, re-render finetune.yaml and finetune.slurm: cd here and run `{COMMAND}`.\n")
    return header + yaml.safe_dump(ordered, sort_keys=False, default_flow_style=False, allow_unicode=True, width=float("inf"))


@dataclass
class RenderResult:
    run_dir: Path
    values: dict[str, Any]           # every key's final value
    output_dir: Path
    files: dict[str, str]            # file name in run_dir -> content
    changed: list[str] = field(default_factory=list)   # names whose content differs from disk
    written: bool = False

    def write(self) -> list[str]:
        """Atomically write the files whose content changed; returns their names."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in self.changed:
            atomic_write_text(self.run_dir / name, self.files[name], mode=0o755 if name == FINETUNE_SLURM else None)
        self.written = True
        return list(self.changed)

    def diff(self) -> str:
        """Unified diff of what writing would change, file by file."""
        out = []
        for name in self.changed:
            path = self.run_dir / name
            old = path.read_text().splitlines(keepends=True) if path.exists() else []
            out.extend(difflib.unified_diff(old, self.files[name].splitlines(keepends=True),
                                            fromfile=str(path), tofile=f"{path} (new)"))
        return "".join(out)


def load_setup_file(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise CkError("config_file", str(path), "not found",
                      f"run from a run directory holding {SETUP_FILE}, or pass --config_file") from None
    except yaml.YAMLError as exc:
        raise CkError("config_file", str(path), f"not valid YAML ({exc.__class__.__name__})", "fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CkError("config_file", str(path), "must be a YAML mapping of key: value", "see the seed README's example")
    return data


def render_run(setup: Mapping[str, Any] | str | os.PathLike | None = None, run_dir: str | os.PathLike = ".",
               overrides: Mapping[str, Any] | None = None, *, settings: Any = None, write: bool = True) -> RenderResult:
    """Render (and with `write`, atomically write) a run directory's files.

    `setup`: a mapping of keys (then setup_finetune.yaml is written from it too), a path to a
    setup_finetune.yaml, or None for `<run_dir>/setup_finetune.yaml`. `overrides` win over it.
    Files whose content is unchanged are not touched.
    """
    run_dir = Path(run_dir).resolve()
    files: dict[str, str] = {}
    if isinstance(setup, Mapping):
        data = dict(setup)
        files[SETUP_FILE] = dump_setup(data)
    else:
        data = load_setup_file(run_dir / SETUP_FILE if setup is None else setup)
    merged = {**canonical_setup(data), **canonical_setup(overrides or {})}
    values = resolve_setup(merged, run_dir, settings)
    files[FINETUNE_YAML] = render_finetune_yaml(values)
    files[FINETUNE_SLURM] = render_finetune_slurm(values, run_dir)
    result = RenderResult(run_dir, values, run_paths(values)["output_dir"], files)
    for name, text in files.items():
        path = run_dir / name
        if not path.is_file() or path.read_bytes() != text.encode("utf-8"):
            result.changed.append(name)
    if write:
        result.write()
    return result


# ---------------------------------------------------------------------------------------------
# Docs and command line
# ---------------------------------------------------------------------------------------------


def keys_markdown() -> str:
    """The key reference (shipped beside the scaffold-experiment skill; a test keeps it in sync)."""
    lines = [
        "# setup_finetune.yaml keys",
        "",
        f"Generated from `KEYS` in cruijff_kit/tools/torchtune/setup_finetune.py; `{COMMAND} --help` prints the same.",
        "Booleans accept true/false (also the strings 'true'/'false'). Unknown keys are errors.",
        "",
    ]
    for group in dict.fromkeys(k.group for k in KEYS):
        lines += [f"## {group}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for k in KEYS:
            if k.group == group:
                cells = [f"`{k.name}`", k.type.replace("|", " or "), k.default_text(), k.help]
                lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description="Render finetune.yaml and finetune.slurm in a run directory from its setup_finetune.yaml. "
                    "Every key below can be given in the file or as a --KEY VALUE flag (flags win).",
        epilog="The seed README's `python ../../tools/torchtune/setup_finetune.py` is this command. "
               "Then: `sbatch finetune.slurm` (SLURM) or `bash finetune.slurm` (here), or `ck run EXP_DIR`.",
        allow_abbrev=False,
    )
    parser.add_argument("--config_file", default=SETUP_FILE, help="setup file to read (default: ./setup_finetune.yaml)")
    parser.add_argument("--run_dir", default=".", help="directory to write finetune.yaml and finetune.slurm in (default: .)")
    parser.add_argument("--dry_run", action="store_true", help="print the diff of what would change; write nothing")
    parser.add_argument("--keys_markdown", action="store_true", help=argparse.SUPPRESS)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for k in KEYS:
        group = groups.setdefault(k.group, parser.add_argument_group(f"keys: {k.group}"))
        flags = [f"--{k.name}"] + [f"--{alias}" for alias, target in ALIASES.items() if target == k.name]
        group.add_argument(*flags, dest=k.name, default=argparse.SUPPRESS, metavar=k.type.upper().replace("|", "_"),
                           help=f"{k.help} (default: {k.default_text()})".replace("%", "%%"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    try:
        if args.keys_markdown:
            print(keys_markdown(), end="")
            return 0
        if unknown:
            flag = next((u for u in unknown if u.startswith("--")), unknown[0])
            check_key(flag.lstrip("-").split("=", 1)[0])  # raises naming the closest key
            raise CkError("argument", unknown[0], "unexpected", f"flags are --KEY VALUE; see `{COMMAND} --help`")
        meta = {"config_file", "run_dir", "dry_run", "keys_markdown"}
        overrides = {k: v for k, v in vars(args).items() if k not in meta}
        result = render_run(Path(args.config_file), args.run_dir, overrides, write=not args.dry_run)
    except CkError as err:
        print(f"setup_finetune: error: {err}", file=sys.stderr)
        return err.exit_code
    if args.dry_run:
        print(result.diff() or "nothing would change")
        return 0
    for name in (FINETUNE_YAML, FINETUNE_SLURM):
        state = "wrote" if name in result.changed else "unchanged"
        print(f"{state} {result.run_dir / name}")
    print(f"output_dir: {result.output_dir}")
    print("next: sbatch finetune.slurm   (or without SLURM: bash finetune.slurm)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
