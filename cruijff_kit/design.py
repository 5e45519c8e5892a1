"""Step 1 of the workflow: build a plan, verify what it needs, write experiment_summary.md.

Every designer (a check's presets here, an LLM designer elsewhere) ends in `write_experiment`,
which checks the model, the datasets and the disk, logs each check to design-experiment.log, and
renders the summary. Nothing is written when a check fails. What is specific to a sanity check
(its presets, variables, data and expectations) comes from its Check object (cruijff_kit.checks).
"""

from __future__ import annotations

import datetime as _dt
import difflib
import shutil
import sys
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from cruijff_kit import explog
from cruijff_kit.checks import Check as SanityCheck
from cruijff_kit.checks import get_check
from cruijff_kit.errors import CkError
from cruijff_kit.fsutil import check_writable_dir, existing_ancestor
from cruijff_kit.experiment import (
    SUMMARY_NAME,
    Compute,
    Experiment,
    Hyper,
    RunPlan,
    plan_error,
)
from cruijff_kit.models.registry import MODELS, model_dir_for
from cruijff_kit.settings import Settings, load_settings

HYPER_KEYS = tuple(Hyper.model_fields)
COMPUTE_KEYS = tuple(Compute.model_fields)
CORE_OVERRIDE_KEYS = HYPER_KEYS + COMPUTE_KEYS + ("model", "purpose", "seeds")

# A sweep too large for its executor is warned about at design time (the numbers are rules of thumb).
LOCAL_RUNS_PER_SLOT_WARN = 8      # local executor: more queued runs per slot than this is a long wait
LOCAL_WALL_HOURS_WARN = 12.0      # ... or more hours of wall time if every run used its time limit
SLURM_RUNS_WARN = 200             # many clusters cap the jobs a user may submit (QOS MaxSubmitJobs)

# Rough on-disk sizes for the disk check when the model directory is not there yet.
MODEL_BYTES = {"Llama-3.2-1B-Instruct": 2_500_000_000, "ck-tiny-llama": 10_000_000}
ADAPTER_FRACTION = 0.03     # LoRA adapter checkpoint per epoch, relative to the model's size
LOG_BYTES_PER_RUN = 20_000_000


def _as_check(check: str | SanityCheck) -> SanityCheck:
    return check if isinstance(check, SanityCheck) else get_check(check)


def default_name(check: str | SanityCheck, today: _dt.date | None = None) -> str:
    return f"sanity_check_{_as_check(check).name}_{(today or _dt.date.today()).isoformat()}"


def experiment_dir_for(scratch: Path, name: str, kind: str = "sanity_check") -> Path:
    return Path(scratch) / ("ck-sanity-checks" if kind == "sanity_check" else "ck-experiments") / name


def override_keys(check: SanityCheck) -> tuple[str, ...]:
    return tuple(dest for _, dest, _ in check.options()) + CORE_OVERRIDE_KEYS


def _check_override_keys(check: SanityCheck, overrides: dict[str, Any]) -> None:
    keys = override_keys(check)
    for key in overrides:
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
            raise CkError("override", key, "unknown design variable",
                          f"did you mean {close[0]}?" if close else f"use one of {', '.join(keys)}")


def _validated(model_cls, data: dict[str, Any], where: str):
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise plan_error(exc, where) from None


def planned_dataset(check: SanityCheck, preset: str, run_name: str, args: dict[str, Any], where: str) -> tuple[dict, dict]:
    """A run's `dataset` and `expected` plan entries from its generator arguments (validated)."""
    generator = _validated(check.Args, args, where)
    dataset = {"label": check.dataset_label(generator, preset, run_name), "ext": ".json", "check": check.name,
               "generator": generator.model_dump(mode="json")}
    return dataset, check.expected(generator).model_dump()


def build_plan(
    check: str | SanityCheck,
    preset: str | None = None,
    *,
    settings: Settings,
    name: str | None = None,
    extra_runs: list[dict] | None = None,
    overrides: dict | None = None,
    today: _dt.date | None = None,
) -> Experiment:
    """The plan of a check's preset, with overrides applied to every run and extra runs appended.
    An extra run is {"name": ..., **generator arguments}; what it leaves out comes from the preset."""
    check = _as_check(check)
    preset = preset or check.default_preset
    if preset not in check.presets:
        raise CkError("preset", preset, "unknown preset", f"use one of {', '.join(check.presets)}")
    base = check.presets[preset]
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    _check_override_keys(check, overrides)
    options = {k: v for k, v in overrides.items() if k not in CORE_OVERRIDE_KEYS}
    today = today or _dt.date.today()
    name = name or default_name(check, today)

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

    run_args = sweep_runs(check, base["runs"], options, overrides.get("seeds"))
    options = {k: v for k, v in options.items() if not isinstance(v, list)}
    extra_args: list[tuple[str, dict[str, Any]]] = []
    for extra in extra_runs or []:
        if not isinstance(extra, dict) or not isinstance(extra.get("name"), str):
            raise CkError("extra run", extra, "needs a name and generator arguments",
                          f"e.g. {{'name': 'run_2', ...}} with fields of {check.Args.__name__}")
        given = {k: v for k, v in extra.items() if k != "name"}
        args = check.apply_options(extra["name"], check.run_defaults(preset, extra["name"], given), options) | given
        extra_args.append((extra["name"], args))

    runs = []
    for i, (run_name, args, seed_index) in enumerate(
            [(n, a, s) for n, a, s in run_args] + [(n, a, None) for n, a in extra_args]):
        dataset, expected = planned_dataset(check, preset, run_name, args, f"runs[{i}] ({run_name}).dataset.generator")
        run_hyper = hyper.model_dump()
        if seed_index is not None:
            run_hyper["seed"] = hyper.seed + seed_index - 1
        runs.append({
            "name": run_name,
            "dataset": dataset,
            "model": model,
            "hyper": run_hyper,
            "compute": compute.model_dump(),
            "expected": expected,
        })

    experiment_dir = experiment_dir_for(settings.scratch, name)
    purpose = overrides.get("purpose") or check.purpose.format(preset=preset, model=model) or (
        f"The {check.name} sanity check, preset `{preset}`, model {model}.")
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


# ---------------------------------------------------------------- sweeps


def _sweep_values(check: SanityCheck, options: dict[str, Any]) -> dict[str, list]:
    """The swept variables (dest -> distinct values, in the order given); a list for a variable the check
    does not sweep is an error."""
    flags = {dest: flag for flag, dest, _ in check.options()}
    swept = {}
    for dest, value in options.items():
        if not isinstance(value, list):
            continue
        if dest not in check.sweep_variables:
            sweepable = ", ".join(flags.get(d, d) for d in check.sweep_variables) or "none"
            raise CkError(flags.get(dest, dest), ",".join(map(str, value)), "takes one value, not a list",
                          f"give one value; variables that take a list: {sweepable}")
        if not value:
            raise CkError(flags.get(dest, dest), "", "empty list", "give at least one value")
        swept[dest] = list(dict.fromkeys(value))
    return swept


def sweep_runs(check: SanityCheck, preset_runs: dict[str, dict], options: dict[str, Any],
               seeds: int | None) -> list[tuple[str, dict[str, Any], int | None]]:
    """(name, generator args, seed index or None) of every run: each preset run with the options applied;
    when a variable has a list of values or `seeds` is given, the product of the values (and of seeds
    1..K) for each preset run, counting only the variables that change that run's data."""
    swept = _sweep_values(check, options)
    fixed = {k: v for k, v in options.items() if k not in swept}
    if not swept and seeds is None:
        return [(name, check.apply_options(name, dict(args), fixed), None) for name, args in preset_runs.items()]
    if seeds is not None and seeds < 1:
        raise CkError("--seeds", seeds, "must be at least 1", "give the number of training seeds, e.g. --seeds 3")
    seed_indices = list(range(1, seeds + 1)) if seeds is not None else [None]
    out: list[tuple[str, dict[str, Any], int | None]] = []
    for base_name, base_args in preset_runs.items():
        applies = [dest for dest, values in swept.items()
                   if len({repr(check.apply_options(base_name, dict(base_args), fixed | {dest: v})) for v in values}) > 1]
        grids = [[(dest, v) for v in swept[dest]] for dest in applies]
        for combo in product(*grids):
            args = check.apply_options(base_name, dict(base_args), fixed | dict(combo))
            for seed_index in seed_indices:
                name = check.sweep_run_name(base_name, check.Args(**args), dict(combo), seed_index)
                out.append((name, args, seed_index))
    return out


def planned_steps(run) -> int | None:
    """Optimizer steps the plan gives a run: ceil(training rows / batch size) x epochs (None when the check's
    arguments do not say how many rows it generates)."""
    args = run.dataset.args()
    rows = getattr(args, "N", None)
    if rows is None:
        return None
    val = getattr(args, "val_size", 0) or 0
    return -(-(rows - val) // max(run.hyper.batch_size, 1)) * run.hyper.epochs


def plan_size_text(exp: Experiment, settings: Settings) -> tuple[str, str | None]:
    """One line with the run count and the compute estimate, and a warning when the run set is too large
    for the executor that `ck run` would use (None when it is not)."""
    from cruijff_kit.settings import slurm_time_seconds

    runs = exp.runs
    steps = sum(planned_steps(run) or 0 for run in runs)
    limit_hours = sum(slurm_time_seconds(r.compute.time) for r in runs) / 3600
    gpu_hours = sum(r.compute.gpus * slurm_time_seconds(r.compute.time) for r in runs) / 3600
    executor = settings.executor
    text = (f"{len(runs)} run{'s' if len(runs) != 1 else ''}"
            + (f", about {steps} optimizer steps in all" if steps else "")
            + f"; at most {limit_hours:.1f} h of run time if every run used its time limit"
            + (f" ({gpu_hours:.1f} GPU-hours)" if gpu_hours else " (CPU only)"))
    warning = None
    if executor == "local":
        slots = settings.max_local_jobs
        wall = limit_hours / slots
        text += f"; executor local, {slots} at once: at most {wall:.1f} h wall"
        if len(runs) > LOCAL_RUNS_PER_SLOT_WARN * slots or wall > LOCAL_WALL_HOURS_WARN:
            warning = (f"{len(runs)} runs on the local executor ({slots} at once, at most {wall:.1f} h wall) is a "
                       f"long queue (warned above {LOCAL_RUNS_PER_SLOT_WARN * slots} runs or {LOCAL_WALL_HOURS_WARN:g} h); "
                       "fewer values or seeds, `ck config set max_local_jobs N`, or `ck config set executor slurm`")
    else:
        text += "; executor slurm: one job per run"
        if len(runs) > SLURM_RUNS_WARN:
            warning = (f"{len(runs)} SLURM jobs at once: many clusters cap a user's submitted jobs (QOS MaxSubmitJobs, "
                       f"warned above {SLURM_RUNS_WARN}); `ck run` submits the rest as slots free (`--array` sends runs of one "
                       "shape as job arrays); check `sacctmgr show qos`, or sweep fewer values or seeds")
    return text, warning


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
    model_dir = model_dir_for(model, exp.models_dir)
    spec = MODELS.get(model_dir.name)
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


def verify_dataset(exp: Experiment, run: RunPlan) -> Check:
    path = run.dataset.dataset_path(exp)
    args = run.dataset.args()
    what = f"dataset for {run.name}"
    command = f"test -f {path}"
    if args is None:
        if path.is_file():
            return Check("VERIFY_DATASET", what, command, f"exists ({_human(path.stat().st_size)})", "an existing file, used as is")
        return Check("VERIFY_DATASET", what, command, f"FAILED: {path} does not exist",
                     "the plan names an existing file that is not there; fix dataset.path or give generator arguments",
                     ok=False)
    check = run.dataset.check_obj()
    findings = check.verify(args, run.hyper)
    failed = next((f for f in findings if f.level == "fail"), None)
    if failed is not None:
        return Check("VERIFY_DATASET", what, command, f"FAILED: {failed.result}", failed.explanation, ok=False)
    warning = any(f.level == "warning" for f in findings)
    note = "".join(f" WARNING: {f.result}; {f.explanation}." if f.level == "warning" else f" {f.result}."
                   for f in findings)
    if path.is_file():
        if check.dataset_ready(args, path):
            return Check("VERIFY_DATASET", what, command, f"exists ({_human(path.stat().st_size)}), generated from these arguments",
                         "reused as is" + note, warning=warning)
        return Check("VERIFY_DATASET", what, command,
                     f"WARNING: {path} exists but its provenance record does not match the plan's generator arguments",
                     "ck scaffold's GENERATE_DATA decides whether to regenerate it; delete the file to force it" + note,
                     warning=True)
    ok_notes = " ".join(f.explanation for f in findings if f.level == "ok")
    return Check("VERIFY_DATASET", what,
                 f"planned generator run: {check.generate_command(args, path)}",
                 f"will be generated at {path} by `ck scaffold` (GENERATE_DATA)",
                 (ok_notes + "." if ok_notes else f"{check.name} data.") + note,
                 warning=warning)


def estimate_disk_bytes(exp: Experiment) -> int:
    need = 0
    for path, run in {r.dataset.dataset_path(exp): r for r in exp.runs}.items():
        args = run.dataset.args()
        if args is not None and not path.exists():
            need += run.dataset.check_obj().estimate_bytes(args)
    for model in {r.model for r in exp.runs}:
        model_dir = model_dir_for(model, exp.models_dir)
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
    from cruijff_kit.experiment import run_columns

    columns = [run_columns(r) for r in exp.runs]
    headers = list(dict.fromkeys(k for c in columns for k in c))
    rows = [("run", *headers, "model", "epochs", "floor", "target acc")]
    for r, cols in zip(exp.runs, columns):
        acc = "-" if r.expected.target_accuracy is None else f"{r.expected.target_accuracy:.2f}"
        rows.append((r.name, *(cols.get(h, "-") for h in headers), r.model, str(r.hyper.epochs),
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
    settings: Settings | None = None,
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
    if exp_dir.is_dir() and not summary.exists() and any(exp_dir.iterdir()) and not force:
        raise CkError("experiment_dir", str(exp_dir), "is a non-empty directory that is not an experiment",
                      "choose another --name, or pass --force to plan into it anyway")
    check_writable_dir(exp_dir, "experiment_dir (--scratch)", "give --scratch a writable directory "
                       "(or `ck config set scratch DIR`)")
    checks = verify(exp)
    failed = [c for c in checks if not c.ok]
    if failed:
        c = failed[0]
        raise CkError(c.action, c.description, c.result.removeprefix("FAILED: "), c.explanation)
    for c in checks:
        if c.warning:
            print(f"warning: {c.action} {c.description}: {c.result}. {c.explanation}", file=sys.stderr)
    size, too_large = plan_size_text(exp, settings or load_settings())
    if too_large:
        print(f"warning: DESIGN_PLAN run set: {too_large}", file=sys.stderr)
    if confirm is not None and not confirm(exp, checks):
        raise CkError("confirmation", "no", "the plan was not written", "re-run with other flags, or --yes")

    replacing = summary.exists()
    exp_dir.mkdir(parents=True, exist_ok=True)
    explog.append_entry(
        exp_dir, "design", "DESIGN_PLAN",
        f"{exp.kind} {exp.name}: {len(exp.runs)} runs ({', '.join(r.name for r in exp.runs)})",
        command=log_command,
        result=f"models {', '.join(sorted({r.model for r in exp.runs}))}; W&B project {exp.wandb_project}; {size}"
               + (f"; WARNING: {too_large}" if too_large else ""),
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
    print(plan_size_text(exp, load_settings())[0], file=out)
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


def design_check(
    check: str | SanityCheck,
    preset: str | None = None,
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
    """Design a sanity check from one of its presets; returns the experiment directory."""
    check = _as_check(check)
    preset = preset or check.default_preset
    settings = settings or load_settings()
    exp = build_plan(check, preset, settings=settings, name=name, extra_runs=extra_runs, overrides=overrides)
    ask = interactive and not yes and sys.stdin.isatty()
    command = command_line or f"ck design {check.name} --preset {preset}" + (f" --name {name}" if name else "")
    return write_experiment(exp, command, force=force, confirm=_ask_on_tty if ask else None, settings=settings,
                            explanation=f"preset {preset}; overrides {overrides or {}}; extra runs {extra_runs or []}")
