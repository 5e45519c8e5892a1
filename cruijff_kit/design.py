"""Step 1 of the workflow: build a plan, verify what it needs, write experiment_summary.md.

Every designer (the bit-sequences presets here, an LLM designer elsewhere) ends in
`write_experiment`, which checks the model, the datasets and the disk, logs each check to
design-experiment.log, and renders the summary. Nothing is written when a check fails.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from cruijff_kit import explog, presets
from cruijff_kit.errors import CkError
from cruijff_kit.fsutil import existing_ancestor
from cruijff_kit.experiment import (
    SUMMARY_NAME,
    BitSequenceArgs,
    Compute,
    Experiment,
    Hyper,
    RunPlan,
    expected_for,
    plan_error,
)
from cruijff_kit.models.registry import MODELS
from cruijff_kit.settings import Settings, load_settings

GENERATOR_OVERRIDES = ("bit_length", "N", "val_size", "data_seed")
LABEL_OVERRIDES = {"p": "Bernoulli probability of label 1 in the probabilistic runs",
                   "noise": "label-flip probability in the parity runs"}
HYPER_KEYS = tuple(Hyper.model_fields)
COMPUTE_KEYS = tuple(Compute.model_fields)
OVERRIDE_KEYS = GENERATOR_OVERRIDES + tuple(LABEL_OVERRIDES) + HYPER_KEYS + COMPUTE_KEYS + ("model", "purpose")
LABEL_KINDS = ("parity", "bernoulli")

# The seed README's file names, kept when the seed preset is used unchanged.
SEED_LABELS = {"parity_run": "parity", "probabilistic_run": "prob_p05"}

# Rough on-disk sizes for the disk check when the model directory is not there yet.
MODEL_BYTES = {"Llama-3.2-1B-Instruct": 2_500_000_000, "ck-tiny-llama": 10_000_000}
ADAPTER_FRACTION = 0.03     # LoRA adapter checkpoint per epoch, relative to the model's size
LOG_BYTES_PER_RUN = 20_000_000


def default_name(today: _dt.date | None = None) -> str:
    return f"sanity_check_bit_sequences_{(today or _dt.date.today()).isoformat()}"


def experiment_dir_for(scratch: Path, name: str, kind: str = "sanity_check") -> Path:
    return Path(scratch) / ("ck-sanity-checks" if kind == "sanity_check" else "ck-experiments") / name


def dataset_label(args: BitSequenceArgs) -> str:
    """A file name that encodes every generator argument, so different data never share a file."""
    kind = "parity" if args.bit_parity else "bernoulli"
    p = "" if args.bit_parity and args.p == 0 else "_p" + f"{args.p:g}".replace(".", "")
    return f"{kind}{p}_L{args.bit_length}_N{args.N}_V{args.val_size}_s{args.seed}"


def run_dataset_label(preset: str, run_name: object, args: BitSequenceArgs) -> str:
    """`dataset_label(args)`, except that a seed-preset run left unchanged keeps the seed's file name."""
    if preset == "seed" and run_name in SEED_LABELS and args == BitSequenceArgs(**presets.SEED["runs"][run_name]):
        return SEED_LABELS[run_name]
    return dataset_label(args)


def parse_add_run(spec: str) -> dict[str, Any]:
    """`NAME:parity|bernoulli:BIT_LENGTH:P[:N[:VAL_SIZE]]` -> dict for `extra_runs`."""
    parts = spec.split(":")
    fix = "write NAME:parity|bernoulli:BIT_LENGTH:P[:N[:VAL_SIZE]], e.g. noisy_run:parity:8:0.1"
    if not 4 <= len(parts) <= 6:
        raise CkError("--add-run", spec, "needs 4 to 6 fields separated by ':'", fix)
    name, labels, *numbers = parts
    if labels not in LABEL_KINDS:
        raise CkError("--add-run", spec, f"labels {labels!r} must be parity or bernoulli", fix)
    run: dict[str, Any] = {"name": name, "labels": labels}
    for key, text, cast in zip(("bit_length", "p", "N", "val_size"), numbers, (int, float, int, int)):
        try:
            run[key] = cast(text)
        except ValueError:
            raise CkError("--add-run", spec, f"{key} {text!r} is not a number", fix) from None
    return run


def _check_override_keys(overrides: dict[str, Any]) -> None:
    for key in overrides:
        if key not in OVERRIDE_KEYS:
            close = difflib.get_close_matches(key, OVERRIDE_KEYS, n=1, cutoff=0.5)
            raise CkError("override", key, "unknown design variable",
                          f"did you mean {close[0]}?" if close else f"use one of {', '.join(OVERRIDE_KEYS)}")


def _validated(model_cls, data: dict[str, Any], where: str):
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise plan_error(exc, where) from None


def preset_run_defaults(preset: str, run_name: object = None, bit_parity: object = None) -> dict[str, Any]:
    """Generator arguments a run takes from the preset when it does not give them: those of the
    preset run of the same name, else of the first preset run with the same kind of labels, else
    of the first preset run. Every designer (flags, --add-run, --describe) uses this one rule."""
    runs = presets.PRESETS[preset]["runs"]
    chosen = runs.get(run_name) if isinstance(run_name, str) else None
    if chosen is None:
        chosen = next((a for a in runs.values() if a["bit_parity"] == bit_parity), next(iter(runs.values())))
    return {k: chosen[k] for k in ("bit_length", "N", "val_size")} | {"seed": chosen.get("seed", 42)}


def build_bit_sequences_plan(
    preset: str = "embedded",
    *,
    settings: Settings,
    name: str | None = None,
    extra_runs: list[dict] | None = None,
    overrides: dict | None = None,
    today: _dt.date | None = None,
) -> Experiment:
    """The plan of a preset, with overrides applied to every run and extra runs appended."""
    if preset not in presets.PRESETS:
        raise CkError("preset", preset, "unknown preset", f"use one of {', '.join(presets.PRESETS)}")
    base = presets.PRESETS[preset]
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    _check_override_keys(overrides)
    today = today or _dt.date.today()
    name = name or default_name(today)

    hyper_data = dict(base["hyper"]) | {k: overrides[k] for k in HYPER_KEYS if k in overrides}
    compute_data = dict(base["compute"])
    # An explicitly set SLURM time/memory (flag, env or file) beats the preset's own sizing.
    if settings.source("slurm_time") != "default":
        compute_data["time"] = settings.slurm_time
    if settings.source("slurm_mem") != "default":
        compute_data["mem"] = settings.slurm_mem
    compute_data |= {k: overrides[k] for k in COMPUTE_KEYS if k in overrides}
    hyper = _validated(Hyper, hyper_data, "hyper")
    compute = _validated(Compute, compute_data, "compute")
    model = overrides.get("model", base["model"])

    run_args: list[tuple[str, dict[str, Any]]] = []
    for run_name, args in base["runs"].items():
        args = dict(args)
        for key in ("bit_length", "N", "val_size"):
            if key in overrides:
                args[key] = overrides[key]
        if "data_seed" in overrides:
            args["seed"] = overrides["data_seed"]
        if args["bit_parity"] and "noise" in overrides:
            args["p"] = overrides["noise"]
        if not args["bit_parity"] and "p" in overrides:
            args["p"] = overrides["p"]
        run_args.append((run_name, args))
    for extra in extra_runs or []:
        extra = dict(extra)
        unknown = set(extra) - {"name", "labels", "bit_length", "p", "N", "val_size", "seed"}
        if unknown or "name" not in extra or extra.get("labels") not in LABEL_KINDS:
            raise CkError("extra run", extra, "needs name, labels (parity|bernoulli), bit_length, p; optional N, val_size, seed",
                          "e.g. {'name': 'noisy_run', 'labels': 'parity', 'bit_length': 8, 'p': 0.1}")
        like = preset_run_defaults(preset, extra["name"], extra["labels"] == "parity")
        args = {
            "bit_length": extra.get("bit_length", overrides.get("bit_length", like["bit_length"])),
            "N": extra.get("N", overrides.get("N", like["N"])),
            "val_size": extra.get("val_size", overrides.get("val_size", like["val_size"])),
            "bit_parity": extra["labels"] == "parity",
            "p": extra.get("p", 0.0),
            "seed": extra.get("seed", overrides.get("data_seed", like["seed"])),
        }
        run_args.append((str(extra["name"]), args))

    runs = []
    for i, (run_name, args) in enumerate(run_args):
        generator = _validated(BitSequenceArgs, args, f"runs[{i}] ({run_name}).dataset.generator")
        runs.append({
            "name": run_name,
            "dataset": {"label": run_dataset_label(preset, run_name, generator), "ext": ".json",
                        "generator": generator.model_dump()},
            "model": model,
            "hyper": hyper.model_dump(),
            "compute": compute.model_dump(),
            "expected": expected_for(generator).model_dump(),
        })

    experiment_dir = experiment_dir_for(settings.scratch, name)
    purpose = overrides.get("purpose") or (
        "Check that LoRA fine-tuning learns a deterministic pattern (bit parity: answer loss falls to ~0) "
        "and does not invent one in random labels (Bernoulli: answer loss plateaus at the entropy floor H(p)). "
        f"Preset `{preset}`, model {model}."
    )
    return Experiment.from_plan_dict({
        "name": name,
        "kind": "sanity_check",
        "date": today.isoformat(),
        "purpose": purpose,
        "experiment_dir": str(experiment_dir),
        "output_root": str(Path(settings.scratch) / "ck-outputs" / name),
        "models_dir": str(settings.models_dir),
        "data_dir": str(settings.data_dir),
        "wandb_project": settings.wandb_project,
        "runs": runs,
    }, where="design")


# ---------------------------------------------------------------- verification


@dataclass
class Check:
    action: str          # VERIFY_MODEL, VERIFY_DATASET, VERIFY_DISK
    description: str
    command: str
    result: str
    explanation: str
    ok: bool = True      # False: the plan cannot work; nothing is written
    warning: bool = False


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"


def verify_model(exp: Experiment, model: str) -> Check:
    model_dir = Path(exp.models_dir) / model
    spec = MODELS.get(model)
    command = f"test -f {model_dir}/config.json"
    if (model_dir / "config.json").is_file():
        from cruijff_kit.models.verify import verify_model_dir  # headers only: no torch

        report = verify_model_dir(model_dir, spec)
        if not report.ok:
            more = f" (+{len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
            return Check("VERIFY_MODEL", f"model {model}", f"ck models verify {model_dir}", f"FAILED: {report.problems[0]}{more}",
                         f"fix the model directory; `ck models verify {model_dir}` lists every problem", ok=False)
        return Check("VERIFY_MODEL", f"model {model}", f"ck models verify {model_dir}", f"found {model_dir} ({report.summary()})",
                     "the runs load their base weights and tokenizer from this directory")
    if spec is not None and spec.embedded:
        return Check("VERIFY_MODEL", f"model {model}", command,
                     f"not built yet at {model_dir}; buildable locally (embedded model, no download)",
                     f"build it with `ck models tiny --models-dir {exp.models_dir}` (or let `ck scaffold` do it)")
    if spec is not None:
        return Check("VERIFY_MODEL", f"model {model}", command, f"MISSING: {model_dir} does not exist",
                     f"download the Hugging Face checkpoint of {model} into {model_dir} before `ck run` "
                     "(config.json, model.safetensors, original/tokenizer.model)", warning=True)
    return Check("VERIFY_MODEL", f"model {model}", command, f"FAILED: {model} is not a known model and {model_dir} does not exist",
                 f"use one of {', '.join(MODELS)} or put a model directory under {exp.models_dir}", ok=False)


def expected_dedup_loss(gen: BitSequenceArgs) -> float:
    """Expected fraction of training rows dropped because their string also occurs in validation.

    The generator draws strings uniformly with replacement; a given string is among the val_size
    validation draws with probability 1 - (1 - 2^-L)^val_size.
    """
    return -math.expm1(gen.val_size * math.log1p(-(2.0 ** -gen.bit_length)))


def verify_dataset(exp: Experiment, run: RunPlan) -> Check:
    path = run.dataset.dataset_path(exp)
    gen = run.dataset.generator
    what = f"dataset for {run.name}"
    command = f"test -f {path}"
    if gen is None:
        if path.is_file():
            return Check("VERIFY_DATASET", what, command, f"exists ({_human(path.stat().st_size)})", "an existing file, used as is")
        return Check("VERIFY_DATASET", what, command, f"FAILED: {path} does not exist",
                     "the plan names an existing file that is not there; fix dataset.path or give generator arguments",
                     ok=False)
    dropped = expected_dedup_loss(gen)
    train_left = (gen.N - gen.val_size) * (1.0 - dropped)
    dedup = (f"2^{gen.bit_length} = {2 ** gen.bit_length} strings vs val_size {gen.val_size}: de-duplication "
             f"drops about {dropped:.0%} of training rows (~{train_left:.0f} left)")
    if train_left < run.hyper.batch_size:
        return Check("VERIFY_DATASET", what, command, f"FAILED: {dedup}",
                     "train and validation share no string, so almost no training data would remain; "
                     "raise bit_length or lower val_size", ok=False)
    warning = dropped >= 0.25
    note = f" WARNING: {dedup}; keep 2^bit_length >> val_size." if warning else f" {dedup}."
    if path.is_file():
        from cruijff_kit.generate import provenance_matches  # numpy: only when a dataset is there

        try:
            same = provenance_matches(path, gen.model_dump())
        except CkError:
            same = False
        if same:
            return Check("VERIFY_DATASET", what, command, f"exists ({_human(path.stat().st_size)}), generated from these arguments",
                         "reused as is" + note, warning=warning)
        return Check("VERIFY_DATASET", what, command,
                     f"WARNING: {path} exists but its provenance record does not match the plan's generator arguments",
                     "ck scaffold's GENERATE_DATA decides whether to regenerate it; delete the file to force it" + note,
                     warning=True)
    labels = "parity" if gen.bit_parity else "bernoulli"
    return Check("VERIFY_DATASET", what,
                 f"planned generator run: --bit_length {gen.bit_length} --N {gen.N} --p {gen.p:g} "
                 f"--bit_parity {gen.bit_parity} --val_size {gen.val_size} --seed {gen.seed} --output {path}",
                 f"will be generated at {path} by `ck scaffold` (GENERATE_DATA)",
                 f"{labels} labels, {gen.N - gen.val_size} train / {gen.val_size} validation rows drawn.{note}",
                 warning=warning)


def estimate_disk_bytes(exp: Experiment) -> int:
    need = 0
    for path, gen in {r.dataset.dataset_path(exp): r.dataset.generator for r in exp.runs}.items():
        if gen is not None and not path.exists():
            need += gen.N * (gen.bit_length + 60)
    for model in {r.model for r in exp.runs}:
        model_dir = Path(exp.models_dir) / model
        size = _dir_bytes(model_dir) if model_dir.is_dir() else MODEL_BYTES.get(model, 2_500_000_000)
        if not model_dir.is_dir() and MODELS.get(model) is not None and MODELS[model].embedded:
            need += size  # built into models_dir
        for run in exp.runs:
            if run.model == model:
                need += int(size * ADAPTER_FRACTION) * run.hyper.epochs + LOG_BYTES_PER_RUN
    return need


def verify_disk(exp: Experiment) -> Check:
    need = estimate_disk_bytes(exp)
    where = existing_ancestor(Path(exp.output_root))
    free = shutil.disk_usage(where).free
    command = f"df {where}"
    if free < need:
        return Check("VERIFY_DISK", "free space for outputs", command,
                     f"FAILED: {_human(free)} free, about {_human(need)} needed",
                     "checkpoints, logs and datasets would not fit; free space or choose another --scratch", ok=False)
    warn = free < 2 * need
    return Check("VERIFY_DISK", "free space for outputs", command,
                 f"{_human(free)} free, about {_human(need)} needed" + (" (WARNING: tight)" if warn else ""),
                 "estimate: datasets to generate, embedded model if not built, one LoRA adapter per epoch and logs "
                 "per run", warning=warn)


def verify(exp: Experiment) -> list[Check]:
    checks = [verify_model(exp, model) for model in dict.fromkeys(r.model for r in exp.runs)]
    checks += [verify_dataset(exp, run) for run in exp.runs]
    checks.append(verify_disk(exp))
    return checks


# ---------------------------------------------------------------- writing


def runs_table(exp: Experiment) -> str:
    rows = [("run", "labels", "bit_length", "p", "N", "val", "model", "epochs", "floor", "target acc")]
    for r in exp.runs:
        g = r.dataset.generator
        labels = "-" if g is None else ("parity" if g.bit_parity else "bernoulli")
        acc = "-" if r.expected.target_accuracy is None else f"{r.expected.target_accuracy:.2f}"
        rows.append((r.name, labels, str(g.bit_length) if g else "-", f"{g.p:g}" if g else "-",
                     str(g.N) if g else "-", str(g.val_size) if g else "-", r.model, str(r.hyper.epochs),
                     f"{r.expected.floor_nats:.4f}", acc))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def write_experiment(
    exp: Experiment,
    log_command: str,
    *,
    force: bool = False,
    confirm: Callable[[Experiment, list[Check]], bool] | None = None,
    explanation: str = "",
) -> Path:
    """Verify, log and write one plan. Returns the experiment directory.

    Refuses to replace an existing plan unless `force` (its Run directories/Jobs/Results sections
    are kept). `confirm` sees the plan and the checks and may decline (CkError, nothing written).
    """
    exp_dir = Path(exp.experiment_dir)
    summary = exp_dir / SUMMARY_NAME
    if summary.exists() and not force:
        raise CkError("experiment_dir", str(exp_dir), f"already has an {SUMMARY_NAME}",
                      "pass --force to replace its plan (Jobs and Results sections are kept) or choose another --name")
    checks = verify(exp)
    failed = [c for c in checks if not c.ok]
    if failed:
        c = failed[0]
        raise CkError(c.action, c.description, c.result.removeprefix("FAILED: "), c.explanation)
    for c in checks:
        if c.warning:
            print(f"warning: {c.action} {c.description}: {c.result}. {c.explanation}", file=sys.stderr)
    if confirm is not None and not confirm(exp, checks):
        raise CkError("confirmation", "no", "the plan was not written", "re-run with other flags, or --yes")

    replacing = summary.exists()
    exp_dir.mkdir(parents=True, exist_ok=True)
    explog.append_entry(
        exp_dir, "design", "DESIGN_PLAN",
        f"{exp.kind} {exp.name}: {len(exp.runs)} runs ({', '.join(r.name for r in exp.runs)})",
        command=log_command,
        result=f"models {', '.join(sorted({r.model for r in exp.runs}))}; W&B project {exp.wandb_project}",
        explanation=explanation or exp.purpose,
    )
    for c in checks:
        explog.append_entry(exp_dir, "design", c.action, c.description, command=c.command, result=c.result,
                            explanation=c.explanation)
    path = exp.write(exp_dir)
    explog.append_entry(
        exp_dir, "design", "CREATE_SUMMARY", f"wrote {path.name}", command=log_command,
        result=f"{path} ({'replaced the previous plan' if replacing else 'new'})",
        explanation=f"the ```yaml block under ## Plan is the plan every step reads; next: ck scaffold {exp_dir}",
    )
    return exp_dir


def print_plan(exp: Experiment, checks: list[Check], out=None) -> None:
    """The runs table and one line per check: what a confirmation prompt shows."""
    print(runs_table(exp), file=out)
    for c in checks:
        print(f"  {c.action:<15} {c.description}: {c.result}", file=out)


def written_message(exp_dir: Path) -> str:
    """What `ck design` prints after writing a plan."""
    return (f"wrote {Path(exp_dir) / SUMMARY_NAME}\n"
            f"log   {explog.log_path(exp_dir, 'design')}\n"
            f"next: ck scaffold {exp_dir}")


def _ask_on_tty(exp: Experiment, checks: list[Check]) -> bool:
    print_plan(exp, checks)
    answer = input(f"Write this plan to {exp.experiment_dir}? [Y/n] ").strip().lower()
    return answer in ("", "y", "yes")


def design_bit_sequences(
    preset: str = "embedded",
    *,
    settings: Settings | None = None,
    name: str | None = None,
    extra_runs: list[dict] | None = None,
    overrides: dict | None = None,
    yes: bool = True,
    interactive: bool = False,
    command_line: str = "",
    force: bool = False,
) -> Path:
    """Design the bit-sequences sanity check from a preset; returns the experiment directory."""
    settings = settings or load_settings()
    exp = build_bit_sequences_plan(preset, settings=settings, name=name, extra_runs=extra_runs, overrides=overrides)
    ask = interactive and not yes and sys.stdin.isatty()
    command = command_line or f"ck design bit-sequences --preset {preset}" + (f" --name {name}" if name else "")
    return write_experiment(exp, command, force=force, confirm=_ask_on_tty if ask else None,
                            explanation=f"preset {preset}; overrides {overrides or {}}; extra runs {extra_runs or []}")
