"""`## Accounting` of experiment_summary.md: what each run's job used, beside what the plan allowed.

Elapsed, CPU-hours (allocated CPUs x elapsed), GPU-hours and max RSS come from one `sacct` on a
cluster with an accounting database (SlurmExecutor.usage); without one (or for local jobs) only the
elapsed time the monitor recorded (the scheduler's own start and end) is shown. "Planned" is the
run's time limit from the plan (`compute.time`), the design step's compute estimate; the steps column
shows the optimizer steps the plan gives a run (rows / batch size x epochs) beside the steps it ran
(fewer after an early stop, a failure or a time limit).
"""

from __future__ import annotations

from cruijff_kit.executors import JobUsage, make_executor
from cruijff_kit.settings import slurm_time_seconds

ACCOUNTING_HEADING = "Accounting"


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _mib(size: int | None) -> str:
    return "-" if size is None else f"{size / 1024 ** 2:.0f} MiB"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def job_usage(executor: str | None, job_ids: list[str]) -> dict[str, JobUsage]:
    """One accounting query for the jobs ({} for the local executor or without a database)."""
    if executor != "slurm" or not job_ids:
        return {}
    try:
        return make_executor("slurm").usage(job_ids)
    except Exception:  # noqa: BLE001 - accounting is a report: no sacct must not stop the summary
        return {}


def accounting_markdown(exp, job_states: dict, executor: str | None,
                        steps_run: dict[str, int | None] | None = None) -> str:
    """The section body: one row per run of the plan, then the totals. `steps_run`: {run: last step logged}."""
    from cruijff_kit.design import planned_steps

    steps_run = steps_run or {}
    ids = [job.job_id for job in job_states.values() if job.job_id]
    usage = job_usage(executor, ids)
    lines = ["| Run | Job ID | State | Steps (planned / run) | Planned (time limit) | Elapsed | CPU-hours | GPU-hours "
             "| Max RSS |",
             "|---|---|---|---|---|---|---|---|---|"]
    planned_total = elapsed_total = cpu_total = gpu_total = 0.0
    steps_planned_total = steps_run_total = 0
    for run in exp.runs:
        job = job_states.get(run.name)
        used = usage.get(job.job_id) if job and job.job_id else None
        elapsed = used.elapsed_s if used and used.elapsed_s is not None else (
            job.elapsed(job.ended_at) if job and job.ended_at else None)
        planned = slurm_time_seconds(run.compute.time)
        planned_total += planned
        elapsed_total += elapsed or 0
        cpu_total += (used.cpu_hours or 0) if used else 0
        gpu_total += (used.gpu_hours or 0) if used else 0
        steps_planned, steps_done = planned_steps(run), steps_run.get(run.name)
        steps_planned_total += steps_planned or 0
        steps_run_total += steps_done or 0
        lines.append(f"| {run.name} | {job.job_id if job and job.job_id else '-'} | {job.state if job else 'NOT_SUBMITTED'} | "
                     f"{'-' if steps_planned is None else steps_planned} / {'-' if steps_done is None else steps_done} | "
                     f"{_hours(planned)} | {_hours(elapsed)} | {_num(used.cpu_hours if used else None)} | "
                     f"{_num(used.gpu_hours if used else None)} | {_mib(used.max_rss_bytes if used else None)} |")
    source = ("sacct (accounting database)" if usage else
              "the monitor's record of the scheduler's start and end times (no accounting database)")
    share = f"{100 * elapsed_total / planned_total:.0f}%" if planned_total else "-"
    return (f"Source: {source}.\n\n" + "\n".join(lines) +
            f"\n\nTotal: planned {_hours(planned_total)}, used {_hours(elapsed_total)} ({share} of the plan); "
            f"{steps_run_total} of {steps_planned_total} planned optimizer steps run; "
            f"{cpu_total:.3f} CPU-hours, {gpu_total:.3f} GPU-hours.")
