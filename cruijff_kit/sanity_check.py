"""`ck sanity-check CHECK`: design -> scaffold -> run -> summarize, in one command, for any registered check.

The preset is the check's default (for the built-in check: the tiny built-in model on this
machine's CPU) unless the executor is slurm and the check has a cluster preset whose model is
present under models_dir. Each invocation gets a fresh experiment directory: today's default name, or
the first of `<name>_2`, `<name>_3`, ... not yet used; an explicit `exp_name` is used as given.
Exit status 0 only when every run's verdict is PASS.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from cruijff_kit.checks import Check, get_check
from cruijff_kit.errors import CkError

STEPS = 4
# A local job's state is a file read, so polling often costs nothing and saves seconds at the end;
# squeue is shared with everyone on the cluster.
LOCAL_POLL_SECONDS = 0.5
SLURM_POLL_SECONDS = 10.0


def normalize_check_name(name: str) -> str:
    """The registered check's name for `name` (- and _ are the same)."""
    return get_check(name, "sanity check").name


def real_model_present(models_dir: str | Path, model: str) -> bool:
    return (Path(models_dir) / model / "config.json").is_file()


def choose_preset(check: Check, settings: Any, executor: str) -> str:
    """The check's cluster preset on SLURM when its model is present, its default preset everywhere else."""
    cluster = check.cluster_preset
    if executor == "slurm" and cluster and real_model_present(settings.models_dir, check.presets[cluster]["model"]):
        return cluster
    return check.default_preset


def fresh_experiment_name(scratch: str | Path, base: str) -> str:
    """`base`, or `base_2`, `base_3`, ...: the first whose experiment and output dirs are both unused."""
    from cruijff_kit.design import experiment_dir_for

    scratch = Path(scratch)
    k = 1
    while True:
        name = base if k == 1 else f"{base}_{k}"
        if not experiment_dir_for(scratch, name).exists() and not (scratch / "ck-outputs" / name).exists():
            return name
        k += 1


class _Progress:
    """`step k/4: what` lines with elapsed seconds (per step and since the start)."""

    def __init__(self, out: TextIO):
        self.out = out
        self.start = time.monotonic()
        self.step_start = self.start

    def begin(self, k: int, what: str) -> None:
        self.step_start = time.monotonic()
        self._print(f"step {k}/{STEPS}: {what} ...")

    def done(self, k: int, what: str) -> None:
        now = time.monotonic()
        self._print(f"step {k}/{STEPS}: {what} ({now - self.step_start:.1f} s; {now - self.start:.1f} s total)")

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def run_sanity_check(
    name: str,
    *,
    settings: Any = None,
    executor: str | None = None,
    preset: str | None = None,
    scratch: str | Path | None = None,
    exp_name: str | None = None,
    live: bool | None = None,
    out: TextIO | None = None,
    run_experiment: Callable[..., dict] | None = None,
    sweep: bool = False,
) -> int:
    """Run the whole check; returns the exit status (0 only when every verdict is PASS).

    `settings` defaults to `load_settings()` with `scratch` and `executor` as flags; `executor`
    overrides the settings' executor. `run_experiment` defaults to cruijff_kit.monitor's.
    """
    from cruijff_kit.design import default_name, design_check, experiment_dir_for
    from cruijff_kit.scaffold import scaffold_experiment
    from cruijff_kit.settings import load_settings
    from cruijff_kit.summarize import summarize_experiment, verdict_table

    out = out or sys.stdout
    check = get_check(name, "sanity check")
    if settings is None:
        settings = load_settings({"scratch": scratch, "executor": executor})
    elif scratch is not None:
        raise CkError("scratch", str(scratch), "given together with settings", "put scratch in the settings")
    executor = executor or settings.executor
    overrides = None
    if sweep:
        if not check.sweep_overrides:
            raise CkError("--sweep", check.name, "this check has no sweep mode", "leave --sweep out")
        overrides = dict(check.sweep_overrides)
        preset = preset or overrides.pop("preset", None)
        overrides.pop("preset", None)
    preset = preset or choose_preset(check, settings, executor)
    if preset not in check.presets:
        raise CkError("--preset", preset, "unknown preset", f"use one of {', '.join(check.presets)}")
    name_given = exp_name is not None
    exp_name = exp_name or fresh_experiment_name(settings.scratch, default_name(check))
    existing = experiment_dir_for(settings.scratch, exp_name)
    if name_given and existing.exists():
        raise CkError("--name", exp_name, f"{existing} already exists",
                      "choose another --name, or leave --name out to get a fresh dated one")
    if live is None:
        live = out.isatty() if hasattr(out, "isatty") else False
    if run_experiment is None:
        from cruijff_kit.monitor import run_experiment

    progress = _Progress(out)
    print(f"sanity check {check.name}: preset {preset}, model {check.presets[preset]['model']}, executor {executor}, "
          f"scratch {settings.scratch}", file=out, flush=True)

    progress.begin(1, f"design {exp_name}" + ("" if name_given else " (fresh name)"))
    command = (f"ck sanity-check {check.name} --preset {preset} --executor {executor}" + (" --sweep" if sweep else "")
               + (f" --name {exp_name}" if name_given else ""))
    exp_dir = design_check(check, preset, settings=settings, name=exp_name, yes=True, command_line=command,
                           overrides=overrides)
    progress.done(1, f"designed {exp_dir}")

    progress.begin(2, "scaffold run directories, datasets and model")
    scaffold = scaffold_experiment(exp_dir, settings=settings, command=command, progress=live)
    progress.done(2, f"scaffolded {len(scaffold.runs)} runs")

    progress.begin(3, f"run {len(scaffold.runs)} runs ({executor})")
    states = run_experiment(exp_dir, executor=executor, live=live, out=out, max_local_jobs=settings.max_local_jobs,
                            poll=LOCAL_POLL_SECONDS if executor == "local" else SLURM_POLL_SECONDS, command=command)
    progress.done(3, "runs ended: " + ", ".join(f"{run} {state}" for run, state in (states or {}).items()))

    progress.begin(4, "summarize")
    result = summarize_experiment(exp_dir)
    progress.done(4, f"summarized: {result.passed}/{len(result.runs)} PASS")

    print(verdict_table(result), file=out)
    print(f"results: {exp_dir / 'experiment_summary.md'} (## Results), plots in {exp_dir / 'plots'}", file=out)
    print(f"sanity check {'PASSED' if result.all_pass else 'did NOT pass'} in {time.monotonic() - progress.start:.1f} s",
          file=out, flush=True)
    return result.exit_code
