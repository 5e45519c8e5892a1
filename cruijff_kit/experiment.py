"""The experiment plan: one pydantic model that every workflow step reads and writes.

It lives in `<experiment dir>/experiment_summary.md`: prose for people, and under `## Plan` one
fenced ```yaml block that is the single source of truth. `Experiment.load` reads only that block
(a hand edit is honoured and validated); `Experiment.write` re-renders the prose from the plan and
keeps the `## Run directories`, `## Jobs` and `## Results` sections that later steps own.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cruijff_kit.errors import CkError
from cruijff_kit.fsutil import atomic_write_text, locked
from cruijff_kit.markdown_sections import get_section
from cruijff_kit.run_config import expects, plan_model
from cruijff_kit.run_config import FIELDS as RUN_CONFIG_FIELDS
from cruijff_kit.settings import load_settings, normalize_wandb_project, slurm_time_seconds

SUMMARY_NAME = "experiment_summary.md"
PLAN_HEADING = "Plan"
PRESERVED_SECTIONS = ("Run directories", "Jobs", "Results")
SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
LEARNABLE_TARGET_ACCURACY = 0.99

_PLAN_RE = re.compile(r"^```ya?ml[ \t]*\n(.*?)^```[ \t]*$", flags=re.M | re.S)


def _safe_name(value: str, what: str) -> str:
    if not SAFE_NAME_RE.match(value) or value in (".", "..") or ".." in value:
        raise ValueError(f"{what} may use only letters, digits, _ - . (no spaces or slashes, not starting with - or .)")
    return value


class _Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BitSequenceArgs(_Plan):
    """Arguments of the bit-sequences generator (`ck generate bit-sequences`)."""

    bit_length: int = Field(ge=1, le=63)  # the generator's limit (numpy RandomState int64 draws)
    N: int = Field(ge=1)
    val_size: int = Field(ge=1)
    bit_parity: bool
    p: float = Field(ge=0.0, le=1.0)
    seed: int = Field(default=42, ge=0, lt=2**32)

    @model_validator(mode="after")
    def _val_below_n(self) -> "BitSequenceArgs":
        if not 0 < self.val_size < self.N:
            raise ValueError(f"val_size ({self.val_size}) must be between 0 and N ({self.N}), exclusive")
        return self


class DatasetPlan(_Plan):
    """`data_dir/<label><ext>`, generated from `generator` unless `path` names an existing file."""

    label: str
    ext: Literal[".json"] = ".json"
    generator: BitSequenceArgs | None = None
    path: str | None = None

    @field_validator("label")
    @classmethod
    def _label(cls, value: str) -> str:
        return _safe_name(value, "a dataset label")

    @model_validator(mode="after")
    def _has_source(self) -> "DatasetPlan":
        if self.generator is not None and self.path is not None:
            raise ValueError("give either generator (data to generate) or path (an existing file), not both")
        return self

    def dataset_path(self, exp: "Experiment") -> Path:
        if self.path:
            path = Path(self.path).expanduser()
            return path if path.is_absolute() else Path(exp.data_dir) / path
        return Path(exp.data_dir) / f"{self.label}{self.ext}"


class _HyperBase(_Plan):
    @property
    def lora_alpha(self) -> int:
        return 2 * self.lora_rank


# The plan's training and resource blocks are made of the run contract's own fields (cruijff_kit/run_config.py):
# the same types, bounds and help as setup_finetune.yaml. "required": the plan must give it; "default": the
# run contract's default; "optional": may be null, then the renderer's default applies.
Hyper = plan_model("Hyper", _HyperBase, {
    "epochs": "required", "batch_size": "required", "lora_rank": "required", "lr": "required",
    "num_warmup_steps": "required", "lr_scheduler": "default", "log_every_n_steps": "required",
    "run_val_every_n_steps": "required", "train_on_input": "required", "system_prompt": "default",
    "seed": "default", "gradient_accumulation_steps": "default", "batch_size_val": "optional",
    "max_steps_per_epoch": "default",
})
Compute = plan_model("Compute", _Plan, {"gpus": "required", "time": "required", "mem": "required", "cpus": "default"})


class Expected(_Plan):
    """What a healthy run reaches at the answer token on validation (nats, accuracy)."""

    kind: Literal["learnable", "floor"]
    floor_nats: float = Field(ge=0.0)
    target_accuracy: float | None = Field(default=None, ge=0.0, le=1.0)
    note: str = ""


class RunPlan(_Plan):
    name: str
    dataset: DatasetPlan
    model: str
    hyper: Hyper
    compute: Compute
    expected: Expected

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _safe_name(value, "a run name")

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        return _safe_name(value, "a model (registry name or directory under models_dir)")


class Experiment(_Plan):
    name: str
    kind: Literal["sanity_check", "experiment"]
    date: str
    purpose: str
    experiment_dir: str
    output_root: str
    models_dir: str
    data_dir: str
    wandb_project: str
    runs: list[RunPlan] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _safe_name(value, "an experiment name")

    @field_validator("date", mode="before")
    @classmethod
    def _date(cls, value: Any) -> str:
        # YAML reads an unquoted 2025-10-28 as a date (and 2025-10-28 12:00 as a datetime: refused below)
        if isinstance(value, _dt.date) and not isinstance(value, _dt.datetime):
            return value.isoformat()
        text = str(value)
        try:
            if _dt.date.fromisoformat(text).isoformat() != text:
                raise ValueError
        except ValueError:
            raise ValueError("must be a date written YYYY-MM-DD") from None
        return text

    @field_validator("experiment_dir", "output_root", "models_dir", "data_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not os.path.isabs(value):
            raise ValueError("must be an absolute path")
        return os.path.normpath(value)

    @field_validator("wandb_project")
    @classmethod
    def _wandb(cls, value: str) -> str:
        try:
            return normalize_wandb_project(value)
        except CkError as err:
            raise ValueError(err.problem) from None

    @model_validator(mode="after")
    def _runs_consistent(self) -> "Experiment":
        seen: dict[str, int] = {}
        datasets: dict[str, BitSequenceArgs | str | None] = {}
        for i, run in enumerate(self.runs):
            if run.name in seen:
                raise ValueError(f"runs[{i}].name {run.name!r} repeats runs[{seen[run.name]}].name; run names must be unique")
            seen[run.name] = i
            source = run.dataset.generator or run.dataset.path
            key = run.dataset.label + run.dataset.ext
            if key in datasets and datasets[key] != source:
                raise ValueError(f"runs[{i}].dataset.label {run.dataset.label!r} is used by another run with "
                                 "different data; give each distinct dataset its own label")
            datasets[key] = source
        return self

    # ------------------------------------------------------------ paths

    def run_dir(self, run_name: str) -> Path:
        return Path(self.experiment_dir) / self.get_run(run_name).name

    def run_output_dir(self, run_name: str) -> Path:
        return Path(self.output_root) / f"ck-out-{self.get_run(run_name).name}"

    def get_run(self, name: str) -> RunPlan:
        for run in self.runs:
            if run.name == name:
                return run
        raise CkError("run", name, "not in this experiment's plan", f"use one of {', '.join(r.name for r in self.runs)}")

    def summary_path(self) -> Path:
        return Path(self.experiment_dir) / SUMMARY_NAME

    # ------------------------------------------------------------ read / write

    @classmethod
    def from_plan_dict(cls, data: Any, where: str = "plan") -> "Experiment":
        """Validate a plan mapping; errors become one CkError naming the field path, value and fix."""
        if not isinstance(data, dict):
            raise CkError(where, type(data).__name__, "the plan must be a YAML mapping", "restore the ```yaml block under ## Plan")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise plan_error(exc, where) from None

    @classmethod
    def load(cls, exp_dir: str | os.PathLike) -> "Experiment":
        """Parse the ```yaml plan block of `<exp_dir>/experiment_summary.md` (exp_dir may be the file)."""
        path = Path(exp_dir)
        if path.is_dir() or path.name != SUMMARY_NAME:
            path = path / SUMMARY_NAME
        if not path.is_file():
            raise CkError("experiment_dir", str(path.parent), f"has no {SUMMARY_NAME}",
                          "run `ck design bit-sequences --yes` first, or point at an experiment directory")
        block = extract_plan_block(path.read_text(), where=str(path))
        try:
            data = yaml.safe_load(block)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at plan line {mark.line + 1}" if mark is not None else ""
            raise CkError(f"{path.name} ## Plan", "yaml", f"the plan block is not valid YAML{at}",
                          "fix the indentation/quoting of the ```yaml block (strings with : or # need quotes)") from None
        return cls.from_plan_dict(data, where=f"{path.name} plan")

    def plan_yaml(self) -> str:
        return yaml.dump(self.model_dump(mode="json"), Dumper=_PlanDumper, sort_keys=False,
                         default_flow_style=False, allow_unicode=True, width=10_000)

    def render(self, existing_text: str | None = None) -> str:
        text = render_summary(self)
        for heading in PRESERVED_SECTIONS:
            body = get_section(existing_text, heading) if existing_text else None
            if body is not None:
                text = text.rstrip("\n") + f"\n\n## {heading}\n\n{body.strip()}\n"
        return text

    def write(self, exp_dir: str | os.PathLike | None = None) -> Path:
        """Render experiment_summary.md atomically, keeping the Run directories/Jobs/Results sections."""
        target = Path(exp_dir) if exp_dir is not None else Path(self.experiment_dir)
        path = target / SUMMARY_NAME
        target.mkdir(parents=True, exist_ok=True)
        with locked(path):  # the same lock markdown_sections.set_section takes
            existing = path.read_text() if path.exists() else None
            atomic_write_text(path, self.render(existing))
        return path


def find_experiment_dir(arg: str | os.PathLike, settings: Any = None) -> Path:
    """A path to an experiment directory (or its summary), or a bare experiment name looked up under
    <scratch>/ck-sanity-checks/ and <scratch>/ck-experiments/."""
    path = Path(arg).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.name == SUMMARY_NAME and path.is_file():
        return path.parent.resolve()
    scratch = None
    if len(path.parts) == 1:
        scratch = Path((settings or load_settings()).scratch)
        for sub in ("ck-sanity-checks", "ck-experiments"):
            if (scratch / sub / path.name).is_dir():
                return scratch / sub / path.name
    where = f" or a name under {scratch}/ck-sanity-checks/ or ck-experiments/" if scratch else ""
    raise CkError("experiment", str(arg), "no such experiment directory", f"give the experiment directory's path{where}")


class _PlanDumper(yaml.SafeDumper):
    """Multi-line strings as one double-quoted line, so no line of a value can end the block or a section."""


def _represent_str(dumper: yaml.SafeDumper, value: str):
    style = '"' if ("\n" in value or "\r" in value or "```" in value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_PlanDumper.add_representer(str, _represent_str)


def extract_plan_block(text: str, where: str = SUMMARY_NAME) -> str:
    heading = re.search(rf"^## {PLAN_HEADING}[ \t]*$", text, flags=re.M)
    if not heading:
        raise CkError(where, "## Plan", "no `## Plan` section", "restore the section with its ```yaml block, or re-run `ck design`")
    match = _PLAN_RE.search(text, heading.end())
    if not match:
        raise CkError(where, "## Plan", "no fenced ```yaml block under ## Plan", "restore the ```yaml ... ``` block")
    return match.group(1)


# ---------------------------------------------------------------- validation errors users can act on

_FIXES = {
    "name": "letters, digits, _ - . only",
    "kind": "sanity_check or experiment",
    "date": "YYYY-MM-DD",
    "experiment_dir": "an absolute path", "output_root": "an absolute path",
    "models_dir": "an absolute path", "data_dir": "an absolute path",
    "bit_length": "a whole number >= 1 with 2^bit_length well above val_size",
    "N": "a whole number of examples >= 1",
    "val_size": "a whole number between 0 and N",
    "p": "a probability between 0 and 1",
    "bit_parity": "true (parity labels) or false (Bernoulli labels)",
    "floor_nats": "a number of nats >= 0", "target_accuracy": "null or a number between 0 and 1",
    "runs": "a list with at least one run",
    "model": "a model name of the registry, e.g. ck-tiny-llama",
    "ext": ".json",
}


def field_path(loc: tuple, prefix: str = "") -> str:
    """A pydantic error location as `prefix.runs[0].hyper.lr` ("" for the plan itself)."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in str(part) or str(part).startswith(("function-", "function_")):
            continue  # pydantic's union/validator tags, not fields
        else:
            out += ("." if out else "") + str(part)
    return out


def _fix(leaf: str) -> str | None:
    """The plan's own fields' fixes; run-contract keys (hyper, compute) say what the run contract says."""
    if leaf in _FIXES:
        return _FIXES[leaf]
    return expects(leaf) if leaf in RUN_CONFIG_FIELDS else None


def plan_error(exc: ValidationError, where: str = "plan") -> CkError:
    errors = exc.errors()
    first = errors[0]
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and "[" in p))  # drop union tags
    field = field_path(loc) or "plan"
    leaf = next((p for p in reversed(loc) if isinstance(p, str)), "")
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key (not part of the plan)"
        fix = "remove it or fix its spelling"
    elif first["type"] == "missing":
        msg = "missing"
        fix = f"add it: {_fix(leaf) or 'see the other runs for an example'}"
    else:
        fix = _fix(leaf) or f"edit the ```yaml block under ## Plan in {SUMMARY_NAME}"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    value = first.get("input") if first["type"] != "missing" else None
    if isinstance(value, (dict, list)):
        value = type(value).__name__
    return CkError(f"{where}: {field}" if where != "plan" else field, value, msg + more, fix)


# ---------------------------------------------------------------- expected results


def binary_entropy_nats(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p={p} is not a probability")
    if p in (0.0, 1.0):
        return 0.0
    return -(p * math.log(p) + (1.0 - p) * math.log(1.0 - p))


def expected_for(args: BitSequenceArgs) -> Expected:
    """The best any model can do on validation, at the answer token."""
    floor = binary_entropy_nats(args.p)
    best_accuracy = max(args.p, 1.0 - args.p)
    if args.bit_parity and args.p == 0.0:
        return Expected(
            kind="learnable", floor_nats=0.0, target_accuracy=LEARNABLE_TARGET_ACCURACY,
            note=f"parity of {args.bit_length} bits is a function of the input: answer loss should fall "
                 f"toward 0 nats and accuracy reach {LEARNABLE_TARGET_ACCURACY}",
        )
    if args.bit_parity:
        note = (f"parity with labels flipped with probability {args.p}: answer loss cannot go below "
                f"H({args.p}) = {floor:.4f} nats; the best accuracy is {best_accuracy:.4f}")
    else:
        note = (f"labels ~ Bernoulli({args.p}) independent of the input: answer loss should plateau at "
                f"H({args.p}) = {floor:.4f} nats and accuracy at {best_accuracy:.4f}, not better")
    return Expected(kind="floor", floor_nats=round(floor, 6), target_accuracy=round(best_accuracy, 6), note=note)


# ---------------------------------------------------------------- the human part of experiment_summary.md


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, inner, out)
    else:
        out[prefix] = value


def _run_facts(run: RunPlan) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    data = run.model_dump(mode="json", exclude={"name", "expected"})
    data["dataset"].pop("label", None)
    _flatten("", data, facts)
    return facts


def _labels(run: RunPlan) -> str:
    gen = run.dataset.generator
    if gen is None:
        return "existing file"
    if gen.bit_parity:
        return "parity" if gen.p == 0 else f"parity, flipped w.p. {gen.p:g}"
    return f"Bernoulli({gen.p:g})"


def render_summary(exp: Experiment) -> str:
    kind = "Sanity check" if exp.kind == "sanity_check" else "Experiment"
    models = sorted({r.model for r in exp.runs})
    out: list[str] = [f"# {kind}: {exp.name}", ""]
    out += ["> " + line if line else ">" for line in (exp.purpose.strip() or "(no purpose given)").splitlines()]
    out += [
        "", "## Overview", "",
        f"- **Kind**: {exp.kind}",
        f"- **Date**: {exp.date}",
        f"- **Runs**: {len(exp.runs)} ({', '.join(r.name for r in exp.runs)})",
        f"- **Model{'s' if len(models) > 1 else ''}**: {', '.join(models)}",
        f"- **W&B project**: {exp.wandb_project} (offline logs under each run's logs/wandb/)",
        f"- **Experiment directory**: `{exp.experiment_dir}`",
        f"- **Outputs**: `{exp.output_root}`",
        "", "## Runs", "",
    ]
    rows = []
    for run in exp.runs:
        gen = run.dataset.generator
        split = f"{gen.N - gen.val_size}/{gen.val_size}" if gen else "-"
        rows.append([
            run.name, _labels(run), gen.bit_length if gen else "-", f"{gen.p:g}" if gen else "-", split,
            run.model, run.hyper.epochs, run.hyper.batch_size, f"{run.hyper.lr:g}",
            f"{run.expected.floor_nats:.4f}",
            "-" if run.expected.target_accuracy is None else f"{run.expected.target_accuracy:.2f}",
        ])
    out.append(_table(["Run", "Labels", "bit_length", "p", "train/val", "Model", "Epochs", "Batch", "LR",
                       "Floor (nats)", "Target acc"], rows))

    facts = [_run_facts(r) for r in exp.runs]
    keys = list(dict.fromkeys(k for f in facts for k in f))
    varying = [k for k in keys if len({repr(f.get(k)) for f in facts}) > 1]
    fixed = [k for k in keys if k not in varying]
    out += ["", "## Variables and controls", ""]
    if len(exp.runs) == 1:
        out.append("One run: nothing varies.")
    elif varying:
        out.append("**Variables** (differ across runs):")
        out.append("")
        out.append(_table(["Run"] + varying, [[r.name] + [f.get(k) for k in varying] for r, f in zip(exp.runs, facts)]))
    out += ["", "**Controls** (the same in every run): " + "; ".join(
        f"{k} = {facts[0][k]!r}" if isinstance(facts[0][k], str) else f"{k} = {facts[0][k]}"
        for k in fixed if facts[0].get(k) is not None) + ".", ""]
    lora = sorted({r.hyper.lora_alpha for r in exp.runs})
    out.append(f"LoRA alpha is always 2 x lora_rank ({', '.join(map(str, lora))}).")

    out += ["", "## Expected results", "",
            "Floors are the lowest validation cross-entropy any model can reach at the answer token "
            "(`val_answer_loss` in logs/metrics.jsonl, nats); target accuracy is the best achievable "
            "`val_answer_acc`. `ck summarize` judges each run against these numbers.", ""]
    for run in exp.runs:
        e = run.expected
        acc = "" if e.target_accuracy is None else f", target accuracy {e.target_accuracy:.4f}"
        out.append(f"- **{run.name}** ({e.kind}): floor {e.floor_nats:.4f} nats{acc}. {e.note}".rstrip())

    out += ["", "## Resources", ""]
    out.append(_table(["Run", "GPUs", "CPUs", "Time limit", "Memory"],
                      [[r.name, r.compute.gpus, r.compute.cpus, r.compute.time, r.compute.mem] for r in exp.runs]))
    gpu_hours = sum(r.compute.gpus * slurm_time_seconds(r.compute.time) for r in exp.runs) / 3600
    cpu_only = all(r.compute.gpus == 0 for r in exp.runs)
    out += ["", "At most {:.1f} GPU-hours if every run used its whole time limit.".format(gpu_hours)
            if not cpu_only else "CPU only: no GPU is requested.",
            "The executor (local or SLURM) is chosen when the runs are launched (`ck run`, setting `executor`)."]

    out += ["", "## Paths", "",
            f"- Run directories (made by `ck scaffold`): `{exp.experiment_dir}/<run>/`",
            f"- Outputs: `{exp.output_root}/ck-out-<run>/` (slurm-<jobid>.out, logs/metrics.jsonl, checkpoints)",
            f"- Models: `{exp.models_dir}/<model>/`"]
    for run in exp.runs:
        how = "generated by `ck scaffold` if absent" if run.dataset.generator else "existing file"
        out.append(f"- Data for {run.name}: `{run.dataset.dataset_path(exp)}` ({how})")

    out += ["", "## Next step", "", "Create the run directories, datasets and configs, then launch and judge:", "",
            "```bash", f"ck scaffold {exp.experiment_dir}", f"ck run {exp.experiment_dir}",
            f"ck summarize {exp.experiment_dir}", "```",
            "", f"## {PLAN_HEADING}", "",
            "The block below is the plan every `ck` step reads (the text above is rendered from it). "
            "A hand edit is honoured and validated by the next `ck` command.", "",
            "```yaml", exp.plan_yaml().rstrip("\n"), "```", ""]
    return "\n".join(out)
