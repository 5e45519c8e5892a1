"""The run contract: every key of a run's setup_finetune.yaml, defined once.

`RunConfig` (pydantic) holds each key's type, bounds, default, help text and group; `ALIASES` holds
the seed's legacy spellings. Everything else is generated from it: the renderer's `--KEY VALUE`
flags and `--help` (tools/torchtune/setup_finetune.py), the plan's `Hyper` and `Compute`
(experiment.py, through `plan_model`), the recipe's start-up check (`check_finetune_config`),
`ck keys` and the key reference in the scaffold-experiment skill (`keys_markdown`).

Defaults come in two kinds. A static default is the field's own. A default that depends on the
settings, the run directory or other keys is *derived*: the field carries a `derived` text (what
`--help` and the docs say) and `resolve()` computes it, in field order, before the model validates.

    config = resolve({"dataset_label": "my_data", "epochs": 3}, run_dir)   # -> RunConfig, or CkError
    validate_key("epochs", "ten")     # CkError: epochs='ten': not a whole number; fix: a whole number >= 1, e.g. 1

Errors are CkError(key as written, value as written, problem, fix: a value that would pass), exit 2.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping, Optional, Union

import annotated_types
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from cruijff_kit.errors import CkError
from cruijff_kit.models.registry import MODELS, ModelSpec, resolve_model
from cruijff_kit.settings import normalize_slurm_mem, normalize_slurm_time

DEFAULT_RECIPE = "cruijff_kit.tools.torchtune.custom_recipes.lora_finetune_single_device_val"
DISTRIBUTED_RECIPE = "cruijff_kit.tools.torchtune.custom_recipes.lora_finetune_distributed_val"
LR_SCHEDULERS = ("get_cosine_schedule_with_warmup",)  # the ones torchtune 0.6.1 ships
EXPERIMENT_ROOTS = ("ck-sanity-checks", "ck-experiments")
ORIGINAL_MAX_SEQ_LEN = 2048      # the original template's tokenizer.max_seq_len
ORIGINAL_TIME = "00:15:00"       # the original renderer's --time default
ORIGINAL_MEM = "8G"              # the original template's #SBATCH --mem
SETUP_FILE = "setup_finetune.yaml"

# The seed's legacy spellings of a key (one table; flags and yaml keys alike).
ALIASES: dict[str, str] = {"torchtune_model_name": "model"}


# ---------------------------------------------------------------------------------------------
# Value types: each is a pydantic type plus a Kind (its name in the docs and the words of a fix)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """Pydantic ignores this metadata; the docs, `ck keys` and error fixes read it."""

    name: str      # short type name shown in docs: int, bool, path, ...
    text: str      # what a valid value is, for a fix: "a whole number"


def _whole(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("not a whole number")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        if not re.fullmatch(r"\s*[+-]?\d+\s*", value):
            raise ValueError("not a whole number")
        return int(value)
    if not isinstance(value, int):
        raise ValueError("not a whole number")
    return value


def _optional_whole(value: Any) -> Any:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none", "~")):
        return None
    return _whole(value)


def _number(value: Any) -> Any:
    # PyYAML reads `3e-4` (no dot) as a string, and flags are strings: both are numbers here
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("not a number")
    try:
        return float(value)
    except ValueError:
        raise ValueError("not a number") from None


def _bool(value: Any) -> bool:
    """true/false only (the seed's 'true'/'false' strings too, any case); 'yes', 1, 'maybe' are refused."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError("not a boolean (true or false)")


def _text(value: Any) -> str:
    """None as '', numbers as their text (YAML reads `2025` as an int); containers and booleans refused."""
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple, set, bool)) or not isinstance(value, (str, int, float)):
        raise ValueError("not a string")
    text = str(value)
    if "\0" in text:
        raise ValueError("contains a NUL character")
    return text


def _line(value: Any) -> str:
    text = _text(value)
    if any(ch in text for ch in "\n\r"):
        raise ValueError("must be a single line")
    return text.strip()


def _optional_line(value: Any) -> str | None:
    return _line(value) or None


def _name(value: Any) -> str:
    text = _line(value)
    if not text or "/" in text or text in (".", ".."):
        raise ValueError("must be a non-empty name without '/'")
    return text


SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # what ck design accepts for a name


def _safe_name(value: Any) -> str:
    """A file or directory name the design step would write: letters, digits, _ - . (one contract)."""
    text = _line(value)
    if not SAFE_NAME_RE.match(text) or ".." in text:
        raise ValueError("may use only letters, digits, _ - . (no spaces or slashes, not starting with - or .)")
    return text


def _group_name(value: Any) -> str:
    text = _line(value)
    if "/" in text or text in (".", ".."):
        raise ValueError("must be a name without '/' ('' = no grouping)")
    return text


def _path(value: Any) -> str:
    text = _line(value)
    if not text:
        raise ValueError("empty path")
    return os.path.expandvars(os.path.expanduser(text))


def _optional_path(value: Any) -> str | None:
    text = _line(value)
    return os.path.expandvars(os.path.expanduser(text)) if text else None


def _modules(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        items = [m.strip() for m in value.split(",")]
        items = [m for m in items if m]
    elif isinstance(value, (list, tuple)):
        items = [_line(m) for m in value]
    else:
        raise ValueError("not a list of modules")
    if any(not m or re.search(r"\s", m) for m in items):
        raise ValueError("module names must be non-empty and without spaces")
    return items


def _epochs_to_save(value: Any) -> Any:
    """'all' (also null), 'none' (= only the last epoch, always saved), a comma list or a list of epochs."""
    if value is None:
        return "all"
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "null", "~", "all"):
            return "all"
        if text == "none":
            return []
        items: list[Any] = [x for x in text.split(",") if x.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    else:
        raise ValueError("not a list of epochs")
    try:
        epochs = sorted({_whole(x) for x in items})
    except ValueError:
        raise ValueError("not a list of epochs (numbered from 0)") from None
    if any(e < 0 for e in epochs):
        raise ValueError("epochs are numbered from 0")
    return epochs


def _slurm(normalize: Callable[[Any, str], str]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        try:
            return normalize(value, "value")
        except CkError as err:
            raise ValueError(err.problem) from None
    return parse


def model_spec(model: str) -> ModelSpec:
    """The registry entry of a model name, or of an absolute model directory (by folder name or config.json)."""
    return resolve_model(model)


def _model(value: Any) -> str:
    text = _line(value)
    if not os.path.isabs(text):
        if text not in MODELS:
            raise ValueError("unknown model")
        return text
    try:
        resolve_model(text)
    except CkError as err:
        raise ValueError(err.problem) from None
    return os.path.normpath(text)


def _choice(options: tuple[str, ...]) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        text = _line(value)
        if text not in options:
            close = difflib.get_close_matches(text, options, n=1, cutoff=0.5)
            raise ValueError(f"not supported{f' (did you mean {close[0]}?)' if close else ''}")
        return text
    return parse


def _one_of(*options: str) -> Any:
    return Annotated[Literal[options], Kind("choice", "one of: " + ", ".join(options)),  # type: ignore[valid-type]
                     BeforeValidator(_choice(options))]


Int = Annotated[int, Kind("int", "a whole number"), BeforeValidator(_whole)]
OptionalInt = Annotated[Optional[int], Kind("int|null", "null or a whole number"), BeforeValidator(_optional_whole)]
Float = Annotated[float, Kind("float", "a number"), BeforeValidator(_number)]
Bool = Annotated[bool, Kind("bool", "true or false"), BeforeValidator(_bool)]
Line = Annotated[str, Kind("str", "one line of text"), BeforeValidator(_line)]
OptionalLine = Annotated[Optional[str], Kind("str|null", "one line of text, or '' for none"), BeforeValidator(_optional_line)]
Text = Annotated[str, Kind("text", "text without NUL characters"), BeforeValidator(_text)]
Name = Annotated[str, Kind("str", "a non-empty name without '/'"), BeforeValidator(_name)]
SafeName = Annotated[str, Kind("str", "letters, digits, _ - . e.g. my_data"), BeforeValidator(_safe_name)]
GroupName = Annotated[str, Kind("str", "a name without '/', or '' for none"), BeforeValidator(_group_name)]
PathStr = Annotated[str, Kind("path", "a directory path"), BeforeValidator(_path)]
OptionalPath = Annotated[Optional[str], Kind("path|null", "a path, or '' for none"), BeforeValidator(_optional_path)]
Modules = Annotated[list[str], Kind("list", "module names separated by commas, e.g. '2024,Python/3.12.3'"),
                    BeforeValidator(_modules)]
EpochsToSave = Annotated[Union[Literal["all"], list[int]], Kind("all|none|list", "'all', 'none' or epochs like '0,4,9'"),
                         BeforeValidator(_epochs_to_save)]
SlurmTime = Annotated[str, Kind("HH:MM:SS", "a SLURM time HH:MM:SS or D-HH:MM:SS, quoted"),
                      BeforeValidator(_slurm(normalize_slurm_time))]
SlurmMem = Annotated[str, Kind("size", "a SLURM memory size with unit K, M, G or T"), BeforeValidator(_slurm(normalize_slurm_mem))]
Model = Annotated[str, Kind("str", f"one of {', '.join(MODELS)}, or an absolute path to such a model's directory"),
                  BeforeValidator(_model)]


_N = "W&B and names"
_D = "dataset"
_T = "model and training"
_C = "checkpoints and outputs"
_S = "SLURM job and environment"


def key(default: Any = PydanticUndefined, *, help: str, group: str, example: Any, derived: str | None = None,
        note: str | None = None, **bounds: Any) -> Any:
    """One key's definition. `derived`: what the render-time default is (computed by `resolve`)."""
    extra: dict[str, Any] = {"group": group}
    if derived:
        extra["derived"] = derived
    if note:
        extra["note"] = note
    return Field(None if derived else default, description=help, examples=[example], json_schema_extra=extra, **bounds)


class RunConfig(BaseModel):
    """Every key of setup_finetune.yaml. Field order is the order of the file, the docs and `--help`."""

    model_config = ConfigDict(extra="forbid")

    # -- W&B and names
    my_wandb_project: Line = key(help="W&B project the run logs to (offline; sync later with `wandb sync`)", group=_N,
                                 example="bit_sequences_2025-10-28",
                                 derived="settings wandb_project (`ck config set wandb_project ...`)")
    my_wandb_run_name: Name = key(help="run name: W&B run name, SLURM job name and the output folder ck-out-<name>",
                                  group=_N, example="my_run", derived="the run directory's name")
    experiment_name: GroupName = key(
        help="groups outputs: the run writes to <output_dir_base>/<experiment_name>/ck-out-<my_wandb_run_name> "
             "('' = no grouping: <output_dir_base>/ck-out-<my_wandb_run_name>)", group=_N,
        example="sanity_check_bit_sequences_2025-10-28",
        derived="the experiment directory's name when the run directory sits in the scratch layout "
                "(<scratch>/ck-sanity-checks/<experiment>/<run>), else '' (no grouping)")
    # -- dataset
    dataset_label: SafeName = key(help="dataset file name without extension (my_data for my_data.json)", group=_D,
                              example="my_data")
    dataset_ext: _one_of(".json") = key(".json", help="dataset file extension; the file holds top-level 'train' and "
                                        "'validation' lists", group=_D, example=".json")
    input_dir_base: PathStr = key(help="directory holding the dataset file", group=_D, example="/data/bit_sequences",
                                  derived="settings data_dir (`ck config set data_dir ...`)")
    input_formatting: Line = key("", help="optional sub-folder of input_dir_base holding the file ('' = none)",
                                 group=_D, example="")
    dataset_type: _one_of("instruct_dataset") = key("instruct_dataset", help="torchtune dataset builder "
                                                    "(torchtune.datasets.<dataset_type>)", group=_D,
                                                    example="instruct_dataset")
    train_on_input: Bool = key(False, help="also train on the input tokens, not only the answer", group=_D,
                               example=True)
    system_prompt: Text = key("", help="system prompt added to every example ('' = none)", group=_D, example="")
    # -- model and training
    model: Model = key("Llama-3.2-1B-Instruct", help=f"model: a folder name under models_dir (one of "
                       f"{', '.join(MODELS)}) or an absolute path to such a model's directory (Hugging Face layout)",
                       group=_T, example="ck-tiny-llama")
    models_dir: PathStr = key(help="directory holding one folder per model (Hugging Face layout)", group=_T,
                              example="/scratch/models",
                              derived="settings models_dir (`ck config set models_dir ...`; by default <scratch>/models)")
    lora_rank: Int = key(8, help="LoRA rank; lora_alpha is always 2 x lora_rank", group=_T, example=8, ge=1)
    epochs: Int = key(1, help="passes over the training split", group=_T, example=1, ge=1)
    batch_size: Int = key(4, help="training examples per step", group=_T, example=4, ge=1)
    gradient_accumulation_steps: Int = key(1, help="batches per optimizer step", group=_T, example=1, ge=1)
    max_steps_per_epoch: OptionalInt = key(None, help="stop each epoch after this many steps (null = the whole split)",
                                           group=_T, example=100, ge=1)
    lr: Float = key(1e-4, help="AdamW learning rate, above 0 and below 1", group=_T, example=0.0001, gt=0.0, lt=1.0,
                    allow_inf_nan=False)
    lr_scheduler: _one_of(*LR_SCHEDULERS) = key("get_cosine_schedule_with_warmup", help="torchtune.training."
                                                "lr_schedulers.<lr_scheduler> (the ones torchtune 0.6.1 ships)",
                                                group=_T, example="get_cosine_schedule_with_warmup")
    num_warmup_steps: Int = key(100, help="learning-rate warmup steps", group=_T, example=100, ge=0)
    seed: Int = key(1234, help="random seed of torchtune (shuffling, LoRA init)", group=_T, example=42, ge=0, lt=2**32)
    log_every_n_steps: Int = key(5, help="log train metrics every N optimizer steps", group=_T, example=5, ge=1)
    run_val_every_n_steps: Int = key(0, help="validate every N optimizer steps on the file's 'validation' split, and "
                                     "at the end; 0 = no validation (then the summary has no validation numbers to "
                                     "judge)", group=_T, example=50, ge=0)
    early_stop_after: OptionalInt = key(None, help="end training once validation answer accuracy has been >= "
                                        "early_stop_accuracy for this many consecutive validations (saves, then an "
                                        "`end` row with `stopped_early`); null = train to the end", group=_T,
                                        example=2, ge=1)
    early_stop_accuracy: Float = key(0.99, help="the held-out target early_stop_after waits for", group=_T,
                                     example=0.99, ge=0.0, le=1.0)
    batch_size_val: Int = key(64, help="validation examples per batch", group=_T, example=64, ge=1)
    max_val_batches: OptionalInt = key(None, help="validate on at most this many batches (null = the whole split)",
                                       group=_T, example=10, ge=1)
    device: _one_of("cpu", "cuda") = key(help="torch device", group=_T, example="cuda",
                                         derived="the model's (registry)")
    dtype: _one_of("fp32", "bf16") = key(help="training dtype", group=_T, example="bf16",
                                         derived="the model's on its device, else fp32 on cpu / bf16 on cuda")
    num_threads: OptionalInt = key(help="CPU threads torch uses", group=_T, example=1, ge=1,
                                   derived="1 on cpu, null (torch's default) on cuda")
    max_seq_len: OptionalInt = key(help="tokenizer truncation length (null = none)", group=_T, example=2048, ge=1,
                                   derived=f"the model's (registry), else {ORIGINAL_MAX_SEQ_LEN} (the original's)")
    # -- checkpoints and outputs
    save_adapter_weights_only: Bool = key(False, help="save only the LoRA adapter at each checkpoint, not the merged "
                                          "model", group=_C, example=True)
    save_last_epoch_only: Bool = key(False, help="checkpoint only the last epoch (same as epochs_to_save: none)",
                                     group=_C, example=False)
    stash_adapter_weights: Bool = key(False, help="accepted for the original's files; no effect here: adapters stay "
                                      "in epoch_<k>/ (the original moved them aside for inspect-ai, which this kit "
                                      "does not run)", group=_C, example=False,
                                      note="no effect")
    epochs_to_save: EpochsToSave = key("all", help="epochs to checkpoint, numbered from 0 as torchtune does: 'all', "
                                       "'none', '0,4,9' (the last epoch is always saved)", group=_C, example="all")
    output_dir_base: PathStr = key(help="outputs go to <output_dir_base>/<experiment_name>/ck-out-<my_wandb_run_name>",
                                   group=_C, example="/scratch/ck-outputs",
                                   derived="<scratch>/ck-outputs; scratch: the settings' or, when that is unset, the "
                                           "one the run directory sits in (<scratch>/ck-sanity-checks/<experiment>/<run>)")
    # -- SLURM and environment
    time: SlurmTime = key(help="#SBATCH --time", group=_S, example="01:00:00",
                          derived=f"settings slurm_time when set (`ck config set slurm_time ...`), else {ORIGINAL_TIME}")
    gpus: Int = key(help="GPUs per node (#SBATCH --gres=gpu:N, omitted when 0); one training process per GPU",
                    group=_S, example=1, ge=0, le=16, derived="1 if device is cuda, else 0")
    nodes: Int = key(1, help="nodes (#SBATCH --nodes); > 1: srun starts one torchrun per node, joined by a c10d "
                     "rendezvous on the first node", group=_S, example=1, ge=1, le=64)
    procs_per_node: Int = key(help="training processes per node (torchrun --nproc_per_node); on CPU (gpus 0) it asks "
                              "for several gloo processes without any GPU", group=_S, example=2, ge=1, le=64,
                              derived="gpus when gpus > 0, else 1")
    custom_recipe: Line = key(help="recipe run by `tune run`: a dotted module, a .py path or a torchtune recipe name",
                              group=_C, example=DEFAULT_RECIPE,
                              derived=f"{DEFAULT_RECIPE.rsplit('.', 1)[1]} for one process (nodes 1, procs_per_node 1), "
                                      f"else {DISTRIBUTED_RECIPE.rsplit('.', 1)[1]} (cruijff_kit.tools.torchtune."
                                      "custom_recipes)")
    cpus: Int = key(1, help="#SBATCH --cpus-per-task", group=_S, example=1, ge=1)
    mem: SlurmMem = key(help="#SBATCH --mem", group=_S, example="32G",
                        derived=f"settings slurm_mem when set (`ck config set slurm_mem ...`), else {ORIGINAL_MEM}")
    account: OptionalLine = key(help="#SBATCH --account (omitted when unset)", group=_S, example="my_account",
                                derived="settings slurm_account")
    partition: OptionalLine = key(help="#SBATCH --partition (omitted when unset)", group=_S, example="gpu",
                                  derived="settings slurm_partition")
    constraint: OptionalLine = key(help="#SBATCH --constraint (omitted when unset)", group=_S, example="a100",
                                   derived="settings slurm_constraint")
    qos: OptionalLine = key(help="#SBATCH --qos (omitted when unset); a QOS submit cap makes `ck run` wait, not fail",
                            group=_S, example="capped", derived="settings slurm_qos")
    conda_env: OptionalLine = key(help="conda environment activated before training (not with venv)", group=_S,
                                  example="cruijff", derived="settings conda_env")
    venv: OptionalPath = key(help="virtualenv activated before training (not with conda_env): a NAME without '/' is "
                             "$PROJECT/venvs/NAME as in the original ($PROJECT when rendering; unset: venvs/NAME in "
                             "the cruijff_kit checkout); a path is used as is (relative: to the run directory)",
                             group=_S, example="cruijff", derived="settings venv (by default the venv running ck)")
    modules: Modules = key(help="environment modules loaded first, comma separated ('2024,Python/3.12.3')", group=_S,
                           example="anaconda3/2024.6", derived="settings modules")

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        # CkError is not a ValueError: pydantic lets it through unchanged, naming the key
        if self.device == "cuda" and self.gpus == 0:
            raise CkError("gpus", 0, "device is cuda but no GPU is requested", "set gpus: 1, or device: cpu")
        check_layout(self.custom_recipe, gpus=self.gpus, nodes=self.nodes, procs_per_node=self.procs_per_node,
                     cuda=self.device == "cuda")
        if self.save_last_epoch_only and isinstance(self.epochs_to_save, list):
            raise CkError("epochs_to_save", self.epochs_to_save, "set together with save_last_epoch_only: true",
                          "keep one of them")
        if isinstance(self.epochs_to_save, list) and self.epochs_to_save and self.epochs_to_save[-1] >= self.epochs:
            raise CkError("epochs_to_save", self.epochs_to_save, f"names an epoch after the last one "
                          f"({self.epochs - 1}; epochs count from 0)", f"use epochs between 0 and {self.epochs - 1}")
        if self.venv and self.conda_env:
            raise CkError("venv", self.venv, f"set together with conda_env={self.conda_env!r}",
                          "keep one: set the other to '' in setup_finetune.yaml or unset it with `ck config`")
        return self

    def saved_epochs(self) -> Union[Literal["all"], list[int]]:
        """epochs_to_save as the recipe reads it (save_last_epoch_only folded in)."""
        return [self.epochs - 1] if self.save_last_epoch_only else self.epochs_to_save


FIELDS: dict[str, FieldInfo] = RunConfig.model_fields


# ---------------------------------------------------------------------------------------------
# Layout: nodes x processes per node, and the recipe that can train on it
# ---------------------------------------------------------------------------------------------


def default_procs_per_node(gpus: int) -> int:
    return gpus if gpus > 0 else 1


def recipe_for_layout(nodes: int, procs_per_node: int) -> str:
    """Our single-device recipe for one process, our distributed one for more."""
    return DEFAULT_RECIPE if nodes * procs_per_node == 1 else DISTRIBUTED_RECIPE


def recipe_kind(recipe: str) -> str | None:
    """'single' (one device only), 'distributed' (needs a torchrun launcher) or None (unknown: launched by layout)."""
    name = Path(recipe).name if "/" in recipe else recipe.rsplit(".", 1)[-1]
    if "single_device" in name:
        return "single"
    if "distributed" in name:
        return "distributed"
    return None


def check_layout(recipe: str | None, *, gpus: int, nodes: int, procs_per_node: int | None, cuda: bool) -> None:
    """CkError when the processes asked for cannot run: one process per GPU on CUDA, and a single-device
    recipe only on one process. The plan's compute block (design time) and RunConfig (render time) call it."""
    procs = default_procs_per_node(gpus) if procs_per_node is None else procs_per_node
    if cuda and gpus > 0 and procs != gpus:
        raise CkError("procs_per_node", procs, f"differs from gpus ({gpus}): training runs one process per GPU",
                      f"set procs_per_node: {gpus}, or leave it out")
    if recipe and nodes * procs > 1 and recipe_kind(recipe) == "single":
        raise CkError("custom_recipe", recipe, f"trains on one device, but the run asks for {nodes} node(s) x "
                      f"{procs} process(es)", f"use {DISTRIBUTED_RECIPE}, or leave custom_recipe out to have it chosen")
PATH_KEYS = ("input_dir_base", "models_dir", "output_dir_base")


# ---------------------------------------------------------------------------------------------
# Field facts, for docs, fixes and `ck keys`
# ---------------------------------------------------------------------------------------------


def kind(name: str) -> Kind:
    return next(m for m in FIELDS[name].metadata if isinstance(m, Kind))


def bounds(name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in FIELDS[name].metadata:
        for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if isinstance(m, getattr(annotated_types, attr.capitalize())):
                out[symbol] = getattr(m, attr)
    return out


def expects(name: str) -> str:
    """What a valid value of the key is, in words, with one that passes: the `fix` of its errors."""
    limits = " and ".join(f"{symbol} {value}" for symbol, value in bounds(name).items())
    return f"{kind(name).text}{' ' + limits if limits else ''}, e.g. {name}: {show(FIELDS[name].examples[0])}"


def show(value: Any) -> str:
    """A value as it is written in setup_finetune.yaml."""
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, str) else str(value)


def default_text(name: str) -> str:
    field = FIELDS[name]
    extra = field.json_schema_extra or {}
    if "derived" in extra:
        return extra["derived"]
    if field.is_required():
        return "required"
    return "null" if field.default is None else repr(field.default)


def aliases_of(name: str) -> list[str]:
    return [alias for alias, target in ALIASES.items() if target == name]


def key_reference() -> list[dict[str, Any]]:
    """One entry per key, in file order: what `ck keys --json` prints."""
    out = []
    for name, field in FIELDS.items():
        extra = field.json_schema_extra or {}
        out.append({
            "name": name, "type": kind(name).name, "default": default_text(name),
            "derived": "derived" in extra, "required": field.is_required() and "derived" not in extra,
            "bounds": bounds(name), "help": field.description, "group": extra["group"], "aliases": aliases_of(name),
            "example": field.examples[0],
        })
    return out


def keys_markdown() -> str:
    """The key reference shipped beside the scaffold-experiment skill (a test keeps it in sync)."""
    lines = [
        "# setup_finetune.yaml keys",
        "",
        "Generated from `RunConfig` in cruijff_kit/run_config.py by `ck keys --markdown`; `ck keys` and "
        "`python -m cruijff_kit.tools.torchtune.setup_finetune --help` print the same.",
        "Every key is also a `--KEY VALUE` flag of the renderer (flags > setup_finetune.yaml > defaults). "
        "Booleans are true/false (also the strings 'true'/'false'). Unknown keys are errors. "
        "Legacy spellings: " + ", ".join(f"`{a}` = `{t}`" for a, t in ALIASES.items()) + ".",
        "",
    ]
    entries = key_reference()
    for group in dict.fromkeys(e["group"] for e in entries):
        lines += [f"## {group}", "", "| key | type | default | bounds | meaning |", "|---|---|---|---|---|"]
        for e in entries:
            if e["group"] == group:
                limits = ", ".join(f"{s} {v}" for s, v in e["bounds"].items())
                meaning = e["help"] + (f" (alias: {', '.join(e['aliases'])})" if e["aliases"] else "")
                cells = [f"`{e['name']}`", e["type"].replace("|", " or "), e["default"], limits, meaning]
                lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Validation: one key, a whole mapping, the recipe's finetune.yaml
# ---------------------------------------------------------------------------------------------


_BOUNDS = (annotated_types.Ge, annotated_types.Gt, annotated_types.Le, annotated_types.Lt)


@functools.lru_cache(maxsize=None)
def _single(name: str, bounded: bool = True) -> type[BaseModel]:
    """A model of the one field `name` (the same FieldInfo), to validate a key on its own; without
    `bounded`, its type only (the recipe's check of torchtune's own keys, whose bounds are torchtune's)."""
    field = FIELDS[name]
    info = _copy_field(field, PydanticUndefined)
    if not bounded:
        info.metadata = [m for m in field.metadata if not isinstance(m, _BOUNDS)]
    return create_model(f"RunConfig_{name}{'' if bounded else '_type'}", __config__=ConfigDict(extra="forbid"),
                        **{name: (field.annotation, info)})


def _copy_field(field: FieldInfo, default: Any, **changes: Any) -> FieldInfo:
    """The same field definition (type, bounds, validators, help) with another default."""
    info = copy.copy(field)
    info.default = default
    for attr, value in changes.items():
        setattr(info, attr, value)
    return info


def key_error(name: str, value: Any, exc: ValidationError, written: str | None = None) -> CkError:
    first = exc.errors()[0]
    problem = first["msg"].removeprefix("Value error, ")
    if first["type"] == "finite_number":
        problem = "not a finite number"
    return CkError(written or name, value, problem, expects(name))


def validate_key(name: str, value: Any, written: str | None = None, *, bounded: bool = True) -> Any:
    """The key's value after validation, or CkError naming the key as written and the value as written."""
    try:
        return getattr(_single(name, bounded).model_validate({name: value}), name)
    except ValidationError as exc:
        raise key_error(name, value, exc, written) from None


def check_key(name: Any, value: Any = None) -> str:
    """The canonical key for `name` (aliases mapped), or CkError naming the key, its value and the closest key."""
    text = str(name)
    if text in FIELDS:
        return text
    if text in ALIASES:
        return ALIASES[text]
    close = difflib.get_close_matches(text, list(FIELDS) + list(ALIASES), n=1, cutoff=0.5)
    raise CkError(text, value, "not a setup_finetune key",
                  f"did you mean {close[0]}?" if close else "see `ck keys` for every key")


def canonical(setup: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(values by canonical key, the spelling each key was written with); unknown or doubled keys refused."""
    values: dict[str, Any] = {}
    written: dict[str, str] = {}
    for raw_name, value in setup.items():
        name = check_key(raw_name, value)
        if name in values:
            raise CkError(str(raw_name), value, f"given twice (also as {written[name]})", "keep one of them")
        values[name], written[name] = value, str(raw_name)
    return values, written


def validate_given(setup: Mapping[str, Any]) -> dict[str, Any]:
    """Each given key validated on its own (no defaults, no cross-key checks), in file order."""
    values, written = canonical(setup)
    checked = {name: validate_key(name, values[name], written[name]) for name in values}
    return {name: checked[name] for name in FIELDS if name in checked}


@dataclass
class _Context:
    values: dict[str, Any]      # resolved so far, in field order
    run_dir: Path
    settings: Any               # cruijff_kit.settings.Settings, loaded on first use

    def setting(self, name: str) -> Any:
        if self.settings is None:
            from cruijff_kit.settings import load_settings
            self.settings = load_settings()
        return getattr(self.settings, name)

    def source(self, name: str) -> str:
        self.setting(name)
        return setting_source(self.settings, name)


def setting_source(settings: Any, name: str) -> str:
    try:
        return settings.source(name)
    except (AttributeError, KeyError):
        return "unknown"


def _in_scratch_layout(run_dir: Path) -> bool:
    return run_dir.parent.parent.name in EXPERIMENT_ROOTS


def _scratch(c: _Context) -> Path:
    """The settings' scratch, unless that is only the default (./ck-scratch of the current directory)
    and the run directory sits in the scratch layout <scratch>/ck-sanity-checks/<experiment>/<run>."""
    if _in_scratch_layout(c.run_dir) and c.source("scratch") == "default":
        return c.run_dir.parent.parent.parent
    return Path(c.setting("scratch"))


def _default_dtype(c: _Context) -> str:
    spec = model_spec(c.values["model"])
    if c.values["device"] == spec.device:
        return spec.dtype
    return "fp32" if c.values["device"] == "cpu" else "bf16"


def _explicit_setting(name: str, original: str) -> Callable[[_Context], Any]:
    return lambda c: c.setting(name) if c.source(name) != "default" else original


# The resolver step: render-time defaults, computed in field order (a default may use earlier keys).
DERIVED: dict[str, Callable[[_Context], Any]] = {
    "my_wandb_project": lambda c: c.setting("wandb_project"),
    "my_wandb_run_name": lambda c: c.run_dir.name,
    "experiment_name": lambda c: c.run_dir.parent.name if _in_scratch_layout(c.run_dir) else "",
    "input_dir_base": lambda c: c.setting("data_dir"),
    "models_dir": lambda c: _scratch(c) / "models" if c.source("models_dir") == "default" else c.setting("models_dir"),
    "device": lambda c: model_spec(c.values["model"]).device,
    "dtype": _default_dtype,
    "num_threads": lambda c: 1 if c.values["device"] == "cpu" else None,
    "max_seq_len": lambda c: model_spec(c.values["model"]).max_seq_len or ORIGINAL_MAX_SEQ_LEN,
    "output_dir_base": lambda c: _scratch(c) / "ck-outputs",
    "time": _explicit_setting("slurm_time", ORIGINAL_TIME),
    "gpus": lambda c: 1 if c.values["device"] == "cuda" else 0,
    "procs_per_node": lambda c: default_procs_per_node(c.values["gpus"]),
    "custom_recipe": lambda c: recipe_for_layout(c.values["nodes"], c.values["procs_per_node"]),
    "mem": _explicit_setting("slurm_mem", ORIGINAL_MEM),
    "account": lambda c: c.setting("slurm_account"),
    "partition": lambda c: c.setting("slurm_partition"),
    "constraint": lambda c: c.setting("slurm_constraint"),
    "qos": lambda c: c.setting("slurm_qos"),
    "conda_env": lambda c: c.setting("conda_env"),
    "venv": lambda c: c.setting("venv"),
    "modules": lambda c: c.setting("modules"),
}
_declared = {n for n, f in FIELDS.items() if "derived" in (f.json_schema_extra or {})}
if _declared != set(DERIVED):  # a derived text without a resolver (or the reverse) is a bug here
    raise AssertionError(f"derived defaults out of sync: {sorted(_declared ^ set(DERIVED))}")


def venv_path(venv: str, run_dir: Path, env: Mapping[str, str] = os.environ) -> str:
    """A NAME (no '/') is the original's $PROJECT/venvs/NAME; a path is taken from the run directory."""
    if "/" not in venv:
        from cruijff_kit.paths import repo_root

        project = env.get("PROJECT") or str(repo_root() or run_dir)
        return str(Path(project) / "venvs" / venv)
    return venv if os.path.isabs(venv) else str((run_dir / venv).resolve())


def resolve(setup: Mapping[str, Any], run_dir: str | os.PathLike = ".", settings: Any = None) -> RunConfig:
    """The resolver step, then the model: given keys validated, missing ones defaulted (static or derived),
    relative paths taken from `run_dir`, cross-key rules checked. CkError on the first problem."""
    run_dir = Path(run_dir).resolve()
    given, written = canonical(setup)
    ctx = _Context({}, run_dir, settings)
    for name, field in FIELDS.items():
        if name in given:
            value = validate_key(name, given[name], written[name])
        elif name in DERIVED:
            raw = DERIVED[name](ctx)
            value = None if raw is None else validate_key(name, str(raw) if isinstance(raw, Path) else raw)
        elif field.is_required():
            raise CkError(name, None, "is required", f"add `{name}: ...` to {SETUP_FILE} or pass --{name} "
                          f"({expects(name)})")
        else:
            value = field.default
        if name in PATH_KEYS and value is not None:
            value = os.path.normpath(value if os.path.isabs(value) else run_dir / value)
        ctx.values[name] = value
    _choose_environment(ctx.values, given, ctx)
    if ctx.values["venv"]:
        ctx.values["venv"] = venv_path(ctx.values["venv"], run_dir)
    return RunConfig.model_validate(ctx.values)


def _choose_environment(values: dict[str, Any], given: Mapping[str, Any], ctx: _Context) -> None:
    """venv and conda_env exclude each other: one named in setup_finetune.yaml beats the other's
    setting, and a conda_env set in the settings beats the venv that defaults to the one running ck."""
    if not (values["venv"] and values["conda_env"]):
        return
    if "venv" in given and "conda_env" not in given:
        values["conda_env"] = None
    elif "conda_env" in given and "venv" not in given:
        values["venv"] = None
    elif not given.keys() & {"venv", "conda_env"} and setting_source(ctx.settings, "venv") == "default":
        values["venv"] = None


def settings_environment(settings: Any) -> tuple[str | None, str | None]:
    """(venv, conda_env) that the settings ask for, with the precedence `resolve` uses."""
    values = {"venv": settings.venv, "conda_env": settings.conda_env}
    _choose_environment(values, {}, _Context({}, Path("."), settings))
    return values["venv"], values["conda_env"]


def output_dir(config: RunConfig) -> Path:
    """<output_dir_base>/<experiment_name>/ck-out-<my_wandb_run_name> (no experiment_name: no grouping)."""
    base = Path(config.output_dir_base)
    if config.experiment_name:
        base = base / config.experiment_name
    return base / f"ck-out-{config.my_wandb_run_name}"


# ---------------------------------------------------------------------------------------------
# The plan's view (experiment.py) and the recipe's view (finetune.yaml) of the same keys
# ---------------------------------------------------------------------------------------------


def plan_model(name: str, base: type[BaseModel], fields: Mapping[str, str]) -> type[BaseModel]:
    """A plan block (Hyper, Compute) made of RunConfig's own fields: same types, bounds and help.

    `fields`: key -> "required" (the plan must give it), "default" (RunConfig's default) or
    "optional" (may be null: the renderer's default then applies)."""
    definitions: dict[str, Any] = {}
    for key_name, how in fields.items():
        field = FIELDS[key_name]
        annotation: Any = field.annotation
        if how == "required":
            info = _copy_field(field, PydanticUndefined, json_schema_extra=None)
        elif how == "optional":  # null, or a value the key's own validators and bounds accept
            annotation = Optional[Annotated[(annotation, *field.metadata)]]
            info = FieldInfo(default=None, description=field.description, examples=field.examples)
        elif how == "default":
            info = _copy_field(field, field.default, json_schema_extra=None)
        else:
            raise ValueError(how)
        definitions[key_name] = (annotation, info)
    return create_model(name, __base__=base, **definitions)


# Where each run-contract key lands in finetune.yaml. At start-up the recipe checks the cruijff_kit additions
# (RECIPE_ADDITIONS: ours, and the original template's top-level keys) in full, and torchtune's own keys by type
# only: their bounds are torchtune's (a hand-written config may train at lr 0, say).
FINETUNE_PLACES: dict[str, tuple[str, ...]] = {
    "my_wandb_project": ("my_wandb_project",),
    "my_wandb_run_name": ("my_wandb_run_name",),
    "dataset_label": ("dataset_label",),
    "models_dir": ("models_dir",),
    "train_on_input": ("dataset", "train_on_input"),
    "lora_rank": ("model", "lora_rank"),
    "epochs": ("epochs",),
    "batch_size": ("batch_size",),
    "gradient_accumulation_steps": ("gradient_accumulation_steps",),
    "max_steps_per_epoch": ("max_steps_per_epoch",),
    "lr": ("optimizer", "lr"),
    "num_warmup_steps": ("lr_scheduler", "num_warmup_steps"),
    "seed": ("seed",),
    "log_every_n_steps": ("log_every_n_steps",),
    "run_val_every_n_steps": ("run_val_every_n_steps",),
    "batch_size_val": ("batch_size_val",),
    "max_val_batches": ("max_val_batches",),
    "num_threads": ("num_threads",),
    "max_seq_len": ("tokenizer", "max_seq_len"),
    "save_adapter_weights_only": ("save_adapter_weights_only",),
    "epochs_to_save": ("epochs_to_save",),
}
RECIPE_ADDITIONS = frozenset({"my_wandb_project", "my_wandb_run_name", "dataset_label", "models_dir",
                              "run_val_every_n_steps", "batch_size_val", "max_val_batches", "num_threads",
                              "epochs_to_save"})
# Top-level finetune.yaml keys of the original template that the renderer keeps (torchtune ignores them).
FINETUNE_TOP_LEVEL_KEYS = frozenset({"my_wandb_project", "my_wandb_run_name", "input_dir", "models_dir", "dataset_label"})


def check_finetune_config(cfg: Any) -> None:
    """The recipe's start-up check: the run-contract keys present in finetune.yaml pass the same field
    validation as setup_finetune.yaml at scaffold time (torchtune's own keys: their type), with the same CkError."""
    if hasattr(cfg, "_metadata"):  # an OmegaConf DictConfig: plain containers, interpolations left as written
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(cfg, resolve=False)
    for name, place in FINETUNE_PLACES.items():
        node: Any = cfg
        for part in place:
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            validate_key(name, node, bounded=name in RECIPE_ADDITIONS)
