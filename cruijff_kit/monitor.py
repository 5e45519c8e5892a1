"""Step 3: submit an experiment's scaffolded runs and watch them until every job has ended.

    states = run_experiment(exp_dir, executor="slurm", max_submit=4, poll=15)   # {run: final state}

What it keeps where:
- `<exp_dir>/.ck-run-state.json` (atomic): per run its job id, state, exit code and earlier attempts.
  A run with a job id is never submitted again, so a killed monitor is resumed with
  `ck run --resume EXP_DIR` without duplicates; a run without one (never submitted, or refused:
  SUBMIT_FAILED) is submitted once by every `ck run`; `ck run EXP_DIR --rerun RUN` gives a run
  whose job has ended a new job (the old one is kept in `attempts`). The time of each submission
  is recorded before the scheduler is asked: a monitor killed before it could record the job id
  looks the job up (one query) when it starts again, instead of submitting the run twice.
- `<exp_dir>/run-experiment.log`: SUBMIT_JOB, SUBMIT_WAIT (a scheduler submit cap such as a QOS
  MaxSubmitJobsPerUser refused it: the run is WAITING, not failed, and is submitted again at each
  poll until a slot frees), SUBMIT_ARRAY (with --array: runs of one shape submitted as one job
  array; a SUBMIT_JOB per task follows, its job id JOBID_i), STATE_CHANGE, ALL_SUBMITTED (or SUBMIT_INCOMPLETE,
  with the counts), ALL_COMPLETE (once, when the last job has ended), DETACH, RESUME, RERUN,
  REQUEUED (a job SLURM put back in the queue after it ran: same job id, not a failure),
  POLL_FAILED / POLL_RECOVERED (the scheduler or its database stopped / started answering: states
  stay as last seen meanwhile, nothing is marked failed or resubmitted; the live table says so) and
  every error (SUBMIT_FAILED, JOB_FAILED, JOB_TIMEOUT, JOB_OOM, RETRY_OOM, RETRY_NODE_FAIL
  (the retry policy, cruijff_kit/retry.py: each retry with why), ...). `Command:` is the
  command as it was run.
- `## Jobs` of `<exp_dir>/experiment_summary.md`: the job table.

Polling is one executor.poll() call per poll for all live jobs (one squeue on SLURM); states are
ours (executors.our_state), elapsed times the scheduler's own start and end times.

Job arrays (`array=True`, SLURM only): each submission pass groups the runs without a job by their
sbatch resource options (executors.array_shape); a group of two or more is written once as
`<exp_dir>/.ck-arrays/<name>.sbatch` (task i runs the group's run i) and submitted as
`sbatch --array=INDICES%THROTTLE`, in chunks that fit --max-submit and the scheduler's submit cap
(a QOS cap counts every task: a refused chunk is halved and tried again, down to a single job,
which then waits as above). Every task is its own job ("JOBID_i") in the state file, the log,
polls and retries; a run alone in its group is a single job.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

import yaml

from cruijff_kit import explog
from cruijff_kit.inputs import load_json, load_yaml_mapping, read_text
from cruijff_kit.errors import CkError
from cruijff_kit.executors import (
    SCRIPT_NAME, UNKNOWN, Executor, Job, JobInfo, SchedulerUnreachable, SubmitError, SubmitLimited,
    array_script_text, array_shape, first_error_lines, index_ranges, is_terminal, log_tail, make_executor, sbatch_options,
)
from cruijff_kit.fsutil import atomic_write_json, atomic_write_text
from cruijff_kit.markdown_sections import set_section
from cruijff_kit.retry import HALF_BATCH, NO_RETRY, RetryPolicy

STATE_NAME = ".ck-run-state.json"
WAITING = "WAITING"  # no job yet: the scheduler's submit limit is reached; submitted when a slot frees
LOCAL_STATE_DIR = ".ck-local-jobs"
ARRAYS_DIR = ".ck-arrays"  # the job array scripts `ck run --array` writes (one per group of same-shape runs)
SUMMARY_NAME = "experiment_summary.md"
JOBS_HEADING = "Jobs"
DEFAULT_POLL = 15.0
RAN_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED"})
REQUEUED_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD"})  # back in the queue after it ran: SLURM requeued it
CLOCK_SLACK = 60.0  # seconds a scheduler's submit time may lag our clock (login node vs controller)


# ---------------------------------------------------------------- the experiment's runs


def scaffolded_runs(exp_dir: Path) -> list[tuple[str, Path]]:
    """(run name, run dir) of every run with a finetune.slurm, in plan order.

    With a plan (experiment_summary.md holding `## Plan`) the plan names the runs; otherwise
    every sub-directory holding a finetune.slurm is a run (hand-made experiments).
    """
    summary = exp_dir / SUMMARY_NAME
    if summary.is_file() and re.search(r"^## Plan[ \t]*$", read_text(summary, SUMMARY_NAME), flags=re.M):
        from cruijff_kit.experiment import Experiment  # pydantic: only when there is a plan

        exp = Experiment.load(exp_dir)
        candidates = [(run.name, Path(exp.run_dir(run.name))) for run in exp.runs]
    else:
        candidates = sorted((p.parent.name, p.parent) for p in exp_dir.glob(f"*/{SCRIPT_NAME}"))
    return [(name, run_dir) for name, run_dir in candidates if (run_dir / SCRIPT_NAME).is_file()]


def run_output_dir(run_dir: Path) -> Path:
    """The run's output_dir: where `#SBATCH --output` puts the job log (docs/formats.md)."""
    output = sbatch_options(run_dir / SCRIPT_NAME).get("output", "slurm-%j.out")
    return (run_dir / output).parent


def last_train_metrics(metrics_path: Path, tail_bytes: int = 65536) -> tuple[int, float] | None:
    """(step, loss) of the latest `"event": "train"` line; a half-written last line is skipped."""
    try:
        with open(metrics_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - tail_bytes))
            chunk = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    for line in reversed(chunk.splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "train" and "step" in record and "loss" in record:
            return int(record["step"]), float(record["loss"])
    return None


# ---------------------------------------------------------------- the state file


@dataclass
class RunState:
    job_id: str | None = None
    state: str = "NOT_SUBMITTED"
    exit_code: int | None = None
    message: str = ""
    submitted_at: float | None = None
    running_since: float | None = None
    ended_at: float | None = None
    first_unknown_at: float | None = None
    oom_retries: int = 0
    node_fail_retries: int = 0
    attempts: list | None = None  # earlier (job_id, state, exit_code) of this run
    submit_intent: float | None = None  # set and saved just before submitting, cleared with the outcome
    array: str | None = None  # "<array script in .ck-arrays>:<task index>" when the job is a job array's task

    def elapsed(self, now: float) -> float | None:
        if self.running_since is None:
            return None
        return (self.ended_at or now) - self.running_since


_STATE_FIX = "restore it from the job ids in run-experiment.log, or delete it to resubmit everything"


class RunStateFile:
    def __init__(self, exp_dir: Path):
        self.path = exp_dir / STATE_NAME
        self.executor: str | None = None
        self.runs: dict[str, RunState] = {}

    @classmethod
    def load(cls, exp_dir: Path) -> "RunStateFile":
        self = cls(exp_dir)
        if self.path.exists():
            try:
                data = load_json(self.path, STATE_NAME, _STATE_FIX)
                self.executor = data["executor"]
                self.runs = {name: RunState(**fields) for name, fields in data["runs"].items()}
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise CkError(STATE_NAME, str(self.path), f"unreadable ({exc.__class__.__name__}: {exc})",
                              _STATE_FIX) from None
        return self

    def exists(self) -> bool:
        return self.path.exists()

    def save(self) -> None:
        atomic_write_json(self.path, {
            "version": 1,
            "executor": self.executor,
            "updated": _dt.datetime.now().isoformat(timespec="seconds"),
            "runs": {name: vars(run) for name, run in self.runs.items()},
        })


# ---------------------------------------------------------------- output


def _fmt_elapsed(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def job_rows(runs: list[tuple[str, Path]], state: RunStateFile, now: float | None = None) -> list[dict]:
    now = now or time.time()
    rows = []
    for name, run_dir in runs:
        run = state.runs.get(name, RunState())
        metrics = last_train_metrics(run_output_dir(run_dir) / "logs" / "metrics.jsonl")
        rows.append({
            "run": name, "job_id": run.job_id, "state": run.state, "exit_code": run.exit_code,
            "elapsed": _fmt_elapsed(run.elapsed(now)),
            "step": metrics[0] if metrics else None, "loss": metrics[1] if metrics else None,
            "message": run.message,
        })
    return rows


def format_table(rows: list[dict]) -> list[str]:
    header = ["RUN", "JOB ID", "STATE", "ELAPSED", "STEP", "LOSS"]
    body = [[r["run"], r["job_id"] or "-", r["state"] + (f" (exit {r['exit_code']})" if r["exit_code"] not in (None, 0) else "")
             + (f" ({r['message']})" if r["state"] == WAITING else ""),
             r["elapsed"], "-" if r["step"] is None else str(r["step"]),
             "-" if r["loss"] is None else f"{r['loss']:.4f}"] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    return ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *body]]


def jobs_markdown(rows: list[dict], executor: str) -> str:
    lines = ["| Run | Job ID | State | Exit code | Elapsed | Note |", "|---|---|---|---|---|---|"]
    for r in rows:
        note = r["message"].replace("|", "/")[:200]
        lines.append(f"| {r['run']} | {r['job_id'] or '-'} | {r['state']} | "
                     f"{'-' if r['exit_code'] is None else r['exit_code']} | {r['elapsed']} | {note or '-'} |")
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    return f"Executor: {executor}. Updated {stamp} by `ck run`.\n\n" + "\n".join(lines)


class Display:
    """TTY: the table redrawn in place. Otherwise: one line per change (and the table at the end)."""

    def __init__(self, out: IO[str], live: bool):
        self.out = out
        self.live = live
        self.tty = live and hasattr(out, "isatty") and out.isatty()
        self._drawn = 0
        self._last_step: dict[str, tuple[object, float]] = {}

    def message(self, text: str) -> None:
        self._clear()
        print(text, file=self.out, flush=True)

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def table(self, rows: list[dict], notice: str = "") -> None:
        if not self.live:
            return
        if self.tty:
            self._clear()
            lines = format_table(rows) + ([notice] if notice else [])
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()
            self._drawn = len(lines)
            return
        now = time.time()
        for r in rows:  # step progress as lines, at most one per run every 30 s
            seen = self._last_step.get(r["run"])
            if r["step"] is not None and r["state"] == "RUNNING" and (seen is None or (seen[0] != r["step"] and now - seen[1] >= 30)):
                self._last_step[r["run"]] = (r["step"], now)
                self.message(f"{_clock()} {r['run']}: job {r['job_id']} step {r['step']} loss {r['loss']:.4f}")

    def final(self, rows: list[dict]) -> None:
        if not self.tty:
            print("\n".join(format_table(rows)), file=self.out, flush=True)
        else:
            self.table(rows)
            self._drawn = 0


def _clock() -> str:
    return _dt.datetime.now().strftime("%H:%M:%S")


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C while a job is submitted and recorded, so no job id is ever lost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            raise KeyboardInterrupt


# ---------------------------------------------------------------- OOM retry


def halve_batch_size(run_dir: Path) -> tuple[int, int]:
    """Halve batch_size in finetune.yaml and setup_finetune.yaml (YAML round trip); (old, new)."""
    config = run_dir / "finetune.yaml"
    if not config.is_file():
        raise CkError("finetune.yaml", str(config), "missing, cannot lower the batch size", "re-run `ck scaffold EXP_DIR`")
    data = load_yaml_mapping(config, "finetune.yaml", "re-run `ck scaffold EXP_DIR --force`")
    old = int(data.get("batch_size", 0)) if isinstance(data, dict) else 0
    if old < 2:
        raise CkError("batch_size", old, "cannot be halved", "give the job more GPU memory (a larger GPU or a smaller model)")
    new = old // 2
    data["batch_size"] = new
    atomic_write_text(config, yaml.safe_dump(data, sort_keys=False))
    setup = run_dir / "setup_finetune.yaml"
    if setup.is_file():
        setup_data = load_yaml_mapping(setup, "setup_finetune.yaml")
        if isinstance(setup_data, dict) and "batch_size" in setup_data:
            setup_data["batch_size"] = new  # keep a later re-render consistent with what ran
            atomic_write_text(setup, yaml.safe_dump(setup_data, sort_keys=False))
    return old, new


# ---------------------------------------------------------------- the monitor


def reattach_hint(exp_dir: Path) -> str:
    return (f"jobs keep running. Reattach: ck run --resume {exp_dir}   "
            f"One-shot view: ck status {exp_dir}")


def run_command_line(exp_dir: Path, *, executor: str, max_submit: int | None = None, stagger: float = 0.0,
                     poll: float = DEFAULT_POLL, detach: bool = False, resume: bool = False, live: bool = True,
                     retry_oom: int | None = None, lost_after: float | None = None, rerun: list[str] | None = None,
                     retry_node_fail: int | None = None, array: bool = False, array_throttle: int | None = None) -> str:
    """The `ck run` command equivalent to run_experiment's arguments (for callers that are not the CLI)."""
    words = ["ck", "run", str(exp_dir), "--executor", executor]
    words += ["--max-submit", str(max_submit)] if max_submit is not None else []
    words += ["--array"] if array and array_throttle is None else []
    words += ["--array-throttle", str(array_throttle)] if array_throttle is not None else []
    words += ["--stagger", f"{stagger:g}"] if stagger else []
    words += ["--poll", f"{poll:g}"] if poll != DEFAULT_POLL else []
    words += ["--detach"] if detach else []
    words += ["--resume"] if resume else []
    words += [] if live else ["--no-live"]
    words += ["--retry-oom", str(retry_oom)] if retry_oom is not None else []
    words += ["--retry-node-fail", str(retry_node_fail)] if retry_node_fail is not None else []
    words += ["--lost-after", f"{lost_after:g}"] if lost_after is not None else []
    for name in rerun or []:
        words += ["--rerun", name]
    return shlex.join(words)


# outcomes of submitting a job array; UNREACHABLE: the controller did not answer (the runs wait)
SUBMITTED, LIMITED, REFUSED, UNREACHABLE = "submitted", "limited", "refused", "unreachable"


class Monitor:
    def __init__(self, exp_dir: Path, executor: Executor, *, poll: float, lost_after: float,
                 retry: RetryPolicy, display: Display, command: str = "", array: bool = False,
                 array_throttle: int | None = None):
        self.exp_dir = exp_dir
        self.array = array
        self.array_throttle = array_throttle
        self._shapes: dict[str, tuple | None] = {}
        self._array_scripts: dict[tuple, tuple[Path, list[str]]] = {}  # shape -> (script, its runs: task i = run i)
        self._submit_cap: int | None = None  # the scheduler's submit cap as far as refusals tell (None: not met)
        self._unreachable = False  # the last single submission found no controller
        self.executor = executor
        self.poll = poll
        self.lost_after = lost_after
        self.retry = retry
        self.display = display
        self.command = command
        self.runs = scaffolded_runs(exp_dir)
        self.run_dirs = dict(self.runs)
        self.state = RunStateFile.load(exp_dir)
        self.refused_now: set[str] = set()  # refused by the scheduler in this invocation: not asked again
        self.submitted_now = 0
        self._summary_body: str | None = None
        self._poll_error: str | None = None
        self._poll_failing_since: float | None = None
        self._poll_failing_part = ""

    # -- logging

    def log(self, action: str, description: str, **kw) -> None:
        explog.append_entry(self.exp_dir, "run", action, description, **kw)

    # -- submitting

    def unsubmitted(self) -> list[str]:
        """Runs with no job (never submitted, or refused earlier) that this invocation has not tried in vain."""
        return [name for name, _ in self.runs
                if self.state.runs.get(name, RunState()).job_id is None and name not in self.refused_now]

    def live_runs(self) -> list[str]:
        return [name for name, run in self.state.runs.items() if run.job_id and not is_terminal(run.state)]

    def job(self, name: str) -> Job:
        return self.executor.job(self.state.runs[name].job_id, self.run_dirs.get(name, self.exp_dir / name), name)

    def submit_pending(self, max_submit: int | None = None, stagger: float = 0.0) -> None:
        """One submission pass over the runs without a job, in plan order: single jobs, or with --array
        the runs of one shape as job arrays. Stops at --max-submit or at the scheduler's submit cap."""
        for unit in self._submission_units():
            left, size = list(unit), len(unit)
            while left:
                live = len(self.live_runs())
                if max_submit is not None and live >= max_submit:
                    return
                room = (max_submit - live) if max_submit is not None else len(left)
                if self._submit_cap is not None:
                    room = min(room, max(1, self._submit_cap - live))
                size = max(1, min(size, len(left), room))
                if size == 1:
                    accepted = self.submit(left[0])
                    if self._unreachable:
                        return  # no controller: nothing learned about its cap; the rest wait for the next poll
                    if not accepted or self.state.runs[left[0]].job_id:  # not a refusal for another reason
                        self._learn_submit_cap(live, 1, accepted)
                    if not accepted:
                        return  # the scheduler's submit cap: the rest wait for the next poll
                    left.pop(0)
                else:
                    outcome = self.submit_array(unit, left[:size])
                    if outcome == UNREACHABLE:
                        return
                    if outcome != REFUSED:
                        self._learn_submit_cap(live, size, outcome == SUBMITTED)
                    if outcome == LIMITED:
                        size //= 2  # a cap counts every task: try a smaller chunk
                        continue
                    left = left[size:]
                if stagger and self.unsubmitted():
                    _sleep(stagger)

    def _submission_units(self) -> list[list[str]]:
        """The runs without a job, in plan order: one per unit, or with --array grouped by shape."""
        pending = self.unsubmitted()
        if not self.array:
            return [[name] for name in pending]
        groups: dict[object, list[str]] = {}
        for name in pending:
            shape = self._shape(name)
            groups.setdefault(shape if shape is not None else ("single", name), []).append(name)
        return list(groups.values())

    def _shape(self, name: str) -> tuple | None:
        if name not in self._shapes:
            self._shapes[name] = array_shape(self.run_dirs[name])
        return self._shapes[name]

    def _learn_submit_cap(self, live: int, size: int, accepted: bool) -> None:
        """What a submission says about the scheduler's cap on this experiment's queued jobs: refused at
        live + size, so at most live + size - 1; accepted above the estimate, so at least live + size
        (the user's other jobs may have ended). Arrays are sized to the estimate; single jobs are
        always tried, so an estimate that is too low grows back."""
        if not accepted:
            bound = live + size - 1
            self._submit_cap = bound if self._submit_cap is None else min(self._submit_cap, bound)
        elif self._submit_cap is not None and live + size > self._submit_cap:
            self._submit_cap = live + size

    def _array_script(self, unit: list[str]) -> Path:
        """The job array script for the unit's runs (task i = unit[i]); written once, reused while the
        unit's runs are all in it."""
        shape = self._shape(unit[0])
        known = self._array_scripts.get(shape)
        if known and set(unit) <= set(known[1]):
            return known[0]
        arrays_dir = self.exp_dir / ARRAYS_DIR
        arrays_dir.mkdir(exist_ok=True)
        taken = [int(m.group(1)) for p in arrays_dir.glob("*.sbatch") if (m := re.search(r"-array(\d+)$", p.stem))]
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", self.exp_dir.name) + f"-array{max(taken, default=0) + 1}"
        script = arrays_dir / f"{stem}.sbatch"
        atomic_write_text(script, array_script_text(script, [self.run_dirs[name] for name in unit]))
        self._array_scripts[shape] = (script, list(unit))
        return script

    def submit_array(self, unit: list[str], names: list[str]) -> str:
        """Submit `names` (runs of `unit`, one shape) as one job array: SUBMITTED, LIMITED (a submit cap
        refused it: nothing recorded, try fewer) or REFUSED (each run SUBMIT_FAILED)."""
        script = self._array_script(unit)
        members = self._array_scripts[self._shape(unit[0])][1]
        tasks = {members.index(name): name for name in names}
        spec = index_ranges(list(tasks)) + (f"%{self.array_throttle}" if self.array_throttle else "")
        command = f"cd {script.parent} && sbatch --parsable --array={spec} {script.name}"
        runs = {name: self.state.runs.setdefault(name, RunState()) for name in names}
        with _interrupts_deferred():
            now = time.time()
            for i, name in tasks.items():
                runs[name].submit_intent, runs[name].array = now, f"{script.name}:{i}"
            self.state.save()
            try:
                ids = self.executor.submit_array(script, {i: self.run_dirs[name] for i, name in tasks.items()},
                                                 self.array_throttle)
            except SchedulerUnreachable as exc:
                for name, run in runs.items():
                    run.array = None
                    self._wait_for_slot(name, run, exc, command)
                return UNREACHABLE
            except SubmitLimited:
                for run in runs.values():
                    run.submit_intent = run.array = None
                self.state.save()
                return LIMITED
            except SubmitError as exc:
                for name, run in runs.items():
                    run.array = None
                    self._submit_failed(name, run, exc, command)
                return REFUSED
            now = time.time()
            for i, name in tasks.items():
                self._record_job(runs[name], ids[i], now)
            self.submitted_now += len(tasks)
            self.state.save()
        base = next(iter(ids.values())).partition("_")[0]
        self.log("SUBMIT_ARRAY", f"submitted {len(tasks)} run(s) as job array {base}", command=command,
                 result=f"job {base}: " + ", ".join(f"{name}={ids[i]}" for i, name in tasks.items()),
                 explanation=f"runs of one shape (the same #SBATCH resources); task i runs run i of {script}; "
                             "each task is tracked as its own job", extra={"Job ID": base})
        for i, name in tasks.items():
            job = self.job(name)
            self.log("SUBMIT_JOB", f"submitted {name}", command=command, result=f"job {job.id}",
                     explanation=f"task {i} of job array {base}; log {job.log}", extra={"Job ID": job.id})
            self.display.message(f"{_clock()} {name}: submitted as job {job.id} (task {i} of array {base})")
        return SUBMITTED

    def _submit_failed(self, name: str, run: RunState, exc: SubmitError, command: str) -> None:
        run.state, run.message, run.ended_at, run.submit_intent = "SUBMIT_FAILED", str(exc), time.time(), None
        run.running_since = run.exit_code = None
        self.refused_now.add(name)
        self.state.save()
        self.log("SUBMIT_FAILED", f"{name} was not submitted", command=command, result=str(exc),
                 explanation="the scheduler refused the job; its message is above. Fix the cause, then "
                             f"`ck run {self.exp_dir}` submits it")
        self.display.message(f"{_clock()} {name}: SUBMIT_FAILED: {exc}")

    def submit(self, name: str) -> bool:
        """Submit the run; False when a submit limit made it wait (submit nothing more this pass)."""
        run_dir = self.run_dirs[name]
        run = self.state.runs.setdefault(name, RunState())
        command = f"cd {run_dir} && " + ("sbatch --parsable finetune.slurm" if self.executor.name == "slurm"
                                         else "bash finetune.slurm  # local executor")
        with _interrupts_deferred():
            run.submit_intent, run.array = time.time(), None
            self.state.save()
            try:
                job = self.executor.submit(run_dir, name)
                self._unreachable = False
            except SubmitLimited as exc:
                self._unreachable = isinstance(exc, SchedulerUnreachable)
                self._wait_for_slot(name, run, exc, command)
                return False
            except SubmitError as exc:
                self._unreachable = False
                self._submit_failed(name, run, exc, command)
                return True
            self._record_job(run, job.id, time.time())
            self.submitted_now += 1
            self.state.save()
        self.log("SUBMIT_JOB", f"submitted {name}", command=command, result=f"job {job.id}",
                 explanation=f"{self.executor.name} executor; log {job.log}", extra={"Job ID": job.id})
        self.display.message(f"{_clock()} {name}: submitted as job {job.id}")
        return True

    def _wait_for_slot(self, name: str, run: RunState, exc: SubmitLimited, command: str) -> None:
        """A submit cap refused the job, or the controller could not be reached: the run waits (no job,
        not a failure) and is submitted again at a later poll; logged once each time a run starts waiting
        or waits for another reason."""
        first = run.state != WAITING or not run.message.startswith(f"{exc.limit}:")
        run.state, run.message, run.submit_intent = WAITING, f"{exc.limit}: submitted when {exc.retry_when}", None
        run.exit_code = run.running_since = run.ended_at = None
        self.state.save()
        if first:
            live = len(self.live_runs())
            self.log("SUBMIT_WAIT", f"{name} waits to be submitted ({exc.limit})", command=command,
                     result=str(exc), explanation=f"{exc.reason}, not a failure: {live} job(s) of this "
                                                  "experiment are queued or running; retried at every poll until accepted")
            self.display.message(f"{_clock()} {name}: WAITING: {exc.limit} ({live} live job(s)); retried when {exc.retry_when}")

    @staticmethod
    def _record_job(run: RunState, job_id: str, submitted_at: float) -> None:
        run.job_id, run.state, run.submitted_at, run.submit_intent = job_id, "PENDING", submitted_at, None
        run.exit_code, run.message, run.running_since, run.ended_at, run.first_unknown_at = None, "", None, None, None

    def recover_interrupted_submissions(self) -> None:
        """Runs whose submission began but whose job id was never recorded (the monitor was killed, or
        the scheduler did not answer in time): adopt the job the executor has from their directory,
        if there is one; the others stay unsubmitted and are submitted as usual."""
        pending = {name: run for name, run in self.state.runs.items()
                   if run.job_id is None and run.submit_intent is not None and name in self.run_dirs}
        if not pending:
            return
        since = min(run.submit_intent for run in pending.values()) - CLOCK_SLACK
        earlier = {a["job_id"] for run in pending.values() for a in (run.attempts or [])}
        singles = {name: self.run_dirs[name] for name, run in pending.items() if not run.array}
        found = self.executor.find_submitted(singles, since, earlier) if singles else {}
        for script_name in sorted({run.array.rpartition(":")[0] for run in pending.values() if run.array}):
            tasks = self.executor.find_submitted_array(self.exp_dir / ARRAYS_DIR / script_name, since, earlier)
            for name, run in pending.items():
                script, _, index = (run.array or "").rpartition(":")
                if script == script_name and index.isdigit() and int(index) in tasks:
                    found[name] = tasks[int(index)]
        for name, run in pending.items():
            job_id = found.get(name)
            if job_id is None:
                run.submit_intent = run.array = None
                continue
            self._record_job(run, job_id, run.submit_intent)
            self.log("SUBMIT_JOB", f"submitted {name}", command=f"{self.executor.name} lookup of {self.run_dirs[name]}",
                     result=f"job {job_id}", extra={"Job ID": job_id},
                     explanation="found after a submission whose job id was never recorded (monitor killed?)")
            self.display.message(f"{_clock()} {name}: found job {job_id} from an interrupted submission")
        self.state.save()

    def check_rerun(self, names: list[str]) -> dict[str, JobInfo]:
        """Refuse, before anything changes, a --rerun of an unknown run or of one whose job still
        lives (asking the scheduler, read-only, about jobs recorded as live); their current JobInfo."""
        for name in names:
            if name not in self.run_dirs:
                raise CkError("--rerun", name, "no scaffolded run of that name",
                              f"use one of: {', '.join(self.run_dirs) or '(none)'}")
        recorded_live = [name for name in dict.fromkeys(names) if name in self.live_runs()]
        jobs = {name: self.job(name) for name in recorded_live}
        infos = self.executor.poll(list(jobs.values())) if jobs else {}
        current = {name: infos[job.id] for name, job in jobs.items()}
        for name, info in current.items():
            if not is_terminal(info.state):
                job_id = self.state.runs[name].job_id
                cancel = f"scancel {job_id}" if self.executor.name == "slurm" else "wait for it to end"
                raise CkError("--rerun", name, f"its job {job_id} is still {info.state}",
                              f"{cancel}, or reattach with `ck run --resume {self.exp_dir}`")
        return current

    def rerun(self, names: list[str], current: dict[str, JobInfo]) -> None:
        """Forget the ended job of each named run (kept in `attempts` and the log), so it is submitted again."""
        for name in dict.fromkeys(names):
            run = self.state.runs.get(name)
            if run is None or run.job_id is None:
                continue  # no job yet: it is submitted anyway
            if name in current:  # ended since it was last recorded
                apply_info(run, current[name], time.time())
            run.attempts = (run.attempts or []) + [{"job_id": run.job_id, "state": run.state, "exit_code": run.exit_code}]
            self.log("RERUN", f"{name}: job {run.job_id} ({run.state}) will be replaced by a new job",
                     command=self.command, result=f"attempt {len(run.attempts) + 1}",
                     explanation="asked for with --rerun; the earlier job stays in .ck-run-state.json `attempts`",
                     extra={"Job ID": run.job_id})
            self.display.message(f"{_clock()} {name}: rerun requested, replacing job {run.job_id} ({run.state})")
            self._record_job(run, None, None)
            run.state = "NOT_SUBMITTED"
        self.state.save()

    def log_submission_pass(self) -> None:
        """After the runs this invocation could submit are submitted: how many runs have a job."""
        total = len(self.runs)
        with_job = sum(1 for name, _ in self.runs if self.state.runs.get(name, RunState()).job_id)
        refused = sorted(self.refused_now)
        jobs = ", ".join(f"{n}={r.job_id}" for n, r in self.state.runs.items() if r.job_id) or "-"
        if not refused:
            self.log("ALL_SUBMITTED", f"all {total} run(s) have a job ({self.submitted_now} submitted by this command)",
                     command=self.command, result=jobs, explanation="-")
            return
        self.log("SUBMIT_INCOMPLETE", f"{with_job} of {total} run(s) have a job ({self.submitted_now} submitted by "
                 f"this command); {len(refused)} refused: {', '.join(refused)}", command=self.command, result=jobs,
                 explanation=f"see the SUBMIT_FAILED entries; after fixing the cause `ck run {self.exp_dir}` submits them")

    # -- polling

    def poll_once(self) -> None:
        live = self.live_runs()
        if not live:
            return
        jobs = {name: self.job(name) for name in live}
        try:
            infos = self.executor.poll(list(jobs.values()))
        except CkError as err:  # e.g. slurmctld restarting: keep the last known states, try again next poll
            self._poll_failed(err)
            return
        now = time.time()
        self._poll_recovered(now)
        changed = False
        for name, job in jobs.items():
            changed |= self._apply(name, self.state.runs[name], job, infos[job.id], now)
        if changed:
            self.state.save()

    def _poll_failed(self, err: CkError) -> None:
        """No answer is not an answer: states stay as last seen (nothing becomes LOST, FAILED or is
        resubmitted) and the next poll asks again. Logged once per outage; the live table says it."""
        if self._poll_error is None:
            self._poll_failing_since = time.time()
            what = self._poll_failing_part = unreachable_part(err)
            self.log("POLL_FAILED", f"{what} does not answer; retrying every poll", command=f"{self.executor.name} poll",
                     result=str(err), explanation="states are kept as last seen; nothing is marked failed or "
                                                  "resubmitted while it does not answer")
            self.display.message(f"{_clock()} {what} unreachable, states kept as last seen; retrying every poll: {err}")
        self._poll_error = str(err)

    def _poll_recovered(self, now: float) -> None:
        if self._poll_error is None:
            return
        waited = now - (self._poll_failing_since or now)
        self.log("POLL_RECOVERED", f"polling works again after {waited:.0f} s", command=f"{self.executor.name} poll",
                 result="answered", explanation=f"the last error was: {self._poll_error}")
        self.display.message(f"{_clock()} polling works again after {waited:.0f} s")
        self._poll_error = self._poll_failing_since = None

    def poll_notice(self) -> str:
        """One line for the live table while polls fail, else ''."""
        if self._poll_error is None:
            return ""
        since = self._poll_failing_since or time.time()
        return (f"! no answer from {self._poll_failing_part} since {_dt.datetime.fromtimestamp(since).strftime('%H:%M:%S')} "
                f"({time.time() - since:.0f} s): states as last seen, retrying every poll")

    def _apply(self, name: str, run: RunState, job: Job, info: JobInfo, now: float) -> bool:
        if info.state == UNKNOWN:
            if run.first_unknown_at is None:
                run.first_unknown_at = now
                return True
            if now - run.first_unknown_at < self.lost_after:
                return False
            info = JobInfo(info.job_id, "LOST", None,
                           f"no squeue/sacct record for {now - run.first_unknown_at:.0f} s (purged, or never existed)")
        else:
            run.first_unknown_at = None
        if info.state == run.state:
            return False
        previous = run.state
        apply_info(run, info, now)
        self.log("STATE_CHANGE", f"{name} job {run.job_id}: {previous} -> {run.state}",
                 command=f"{self.executor.name} poll", result=run.state, explanation=info.reason or "-",
                 extra={"Job ID": run.job_id, "Previous": previous, "Current": run.state})
        self.display.message(f"{_clock()} {name}: job {run.job_id} {previous} -> {run.state}"
                             + (f" (exit {info.exit_code})" if info.exit_code not in (None, 0) else ""))
        if previous in RAN_STATES and run.state in REQUEUED_STATES:
            self.log("REQUEUED", f"{name} job {run.job_id} was requeued by SLURM", command=f"{self.executor.name} poll",
                     result=f"{previous} -> {run.state}", extra={"Job ID": run.job_id},
                     explanation="a node failure, preemption or `scontrol requeue`: the same job starts again after "
                                 "SLURM's requeue delay and resumes from its last epoch checkpoint; not a failure")
            self.display.message(f"{_clock()} {name}: job {run.job_id} requeued by SLURM (node failure, preemption or "
                                 "scontrol requeue); it resumes from its last epoch checkpoint")
        if is_terminal(run.state) and run.state != "COMPLETED":
            self._report_failure(name, run, job)
        return True

    def _report_failure(self, name: str, run: RunState, job: Job) -> None:
        log = job.log
        tail = log_tail(log)
        causes = [line for line in first_error_lines(log) if line not in tail]
        code = "-" if run.exit_code is None else str(run.exit_code)
        self.display.message(f"{name}: job {run.job_id} {run.state}, exit code {code}; {run.message or ''}\n"
                             + (f"  first error lines of {log}:\n" + "\n".join("    " + line for line in causes) + "\n"
                                if causes else "")
                             + f"  last lines of {log}:\n" + ("\n".join("    " + line for line in tail) or "    (no log)"))
        self.log(f"JOB_{run.state}", f"{name} job {run.job_id} ended {run.state}",
                 command=f"tail {log}", result=f"exit code {code}",
                 explanation=(run.message or "-") + (f" | first error line: {causes[0]}" if causes else "")
                 + " | last log line: " + (tail[-1] if tail else "(no log)"),
                 extra={"Job ID": run.job_id, "Exit code": code})
        self.apply_retry_policy(name, run)

    def apply_retry_policy(self, name: str, run: RunState) -> None:
        """The retry policy (cruijff_kit.retry) for a run whose job ended badly: every retry is logged with why."""
        decision = self.retry.decide(run.state, run.oom_retries, run.node_fail_retries)
        if decision.action == NO_RETRY:
            return
        run_dir = self.run_dirs[name]
        change = "unchanged"
        if decision.action == HALF_BATCH:
            try:
                old, new = halve_batch_size(run_dir)
            except CkError as err:
                self.log("RETRY_SKIPPED", f"{name}: no retry", result=str(err), explanation=decision.why + "; batch size cannot shrink")
                self.display.message(f"{name}: not retried: {err}")
                return
            change = f"batch_size {new} (was {old})"
            command = f"edit {run_dir / 'finetune.yaml'}: batch_size {old} -> {new}"
        else:
            command = f"resubmit {run_dir / SCRIPT_NAME}"
        run.attempts = (run.attempts or []) + [{"job_id": run.job_id, "state": run.state, "exit_code": run.exit_code}]
        if decision.kind == "oom":
            run.oom_retries += 1
        else:
            run.node_fail_retries += 1
        self.log("RETRY_OOM" if decision.kind == "oom" else "RETRY_NODE_FAIL",
                 f"{name}: job {run.job_id} {run.state}: resubmitting with {change}", command=command,
                 result=f"attempt {len(run.attempts) + 1}", explanation=decision.why, extra={"Job ID": run.job_id})
        self.display.message(f"{_clock()} {name}: retrying: {decision.why}")
        run.job_id = None
        self.submit(name)

    # -- the end

    def completion_logged(self) -> bool:
        """Whether ALL_COMPLETE was written after the latest submission (so it is written once)."""
        actions = [entry.action for entry in explog.read_log(self.exp_dir, "run")]
        last = {action: i for i, action in enumerate(actions)}
        return last.get("ALL_COMPLETE", -1) > max(last.get("SUBMIT_JOB", -1), last.get("RERUN", -1))

    # -- summary

    def rows(self) -> list[dict]:
        return job_rows(self.runs, self.state)

    def write_summary(self) -> None:
        rows = self.rows()
        key = json.dumps([(r["run"], r["job_id"], r["state"], r["exit_code"], r["elapsed"]) for r in rows])
        if key != self._summary_body:
            set_section(self.exp_dir / SUMMARY_NAME, JOBS_HEADING, jobs_markdown(rows, self.executor.name))
            self._summary_body = key

    def final_states(self) -> dict[str, str]:
        return {name: self.state.runs.get(name, RunState()).state for name, _ in self.runs}


def unreachable_part(err: CkError) -> str:
    """Which part of the scheduler a failed poll could not reach, in words."""
    if err.field == "sacct":
        return "the accounting database (slurmdbd)"
    return "the scheduler (slurmctld)" if err.field in ("squeue", "scontrol") else f"the {err.field} query"


def apply_info(run: RunState, info: JobInfo, now: float) -> None:
    """Record a job's state (ours), exit code, reason, and its start and end times: the scheduler's
    own when it gives them (a job that ran between two polls still shows how long it ran)."""
    run.state, run.exit_code, run.message = info.state, info.exit_code, info.reason
    if info.started_at is not None:
        run.running_since = info.started_at
    elif run.running_since is None and info.state not in ("PENDING", UNKNOWN) and not is_terminal(info.state):
        run.running_since = now
    if is_terminal(info.state):
        run.ended_at = info.ended_at or (now if run.running_since is not None else None)


def _make_executor(executor: str | Executor, exp_dir: Path, max_local_jobs: int | None) -> Executor:
    if isinstance(executor, Executor):
        return executor
    if executor == "local" and max_local_jobs is None:
        from cruijff_kit.settings import load_settings

        max_local_jobs = load_settings().max_local_jobs
    return make_executor(executor, state_dir=exp_dir / LOCAL_STATE_DIR, max_jobs=max_local_jobs)


def _sleep(seconds: float) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))


def run_experiment(exp_dir: str | os.PathLike, *, executor: str | Executor = "local", max_submit: int | None = None,
                   stagger: float = 0.0, poll: float = DEFAULT_POLL, detach: bool = False, resume: bool = False,
                   live: bool = True, retry_oom: int | None = None, lost_after: float | None = None,
                   max_local_jobs: int | None = None, rerun: list[str] | None = None,
                   command: str | None = None, out: IO[str] | None = None,
                   retry_node_fail: int | None = None, array: bool = False,
                   array_throttle: int | None = None) -> dict[str, str]:
    """Submit every scaffolded run that has no job (refused ones included, once each) and monitor
    until all jobs have ended. `rerun`: runs whose ended job is replaced by a new one. `command`:
    the command line to log (default: the equivalent `ck run`). `array` (implied by
    `array_throttle`): runs of one shape go as SLURM job arrays, at most `array_throttle` (default
    max_submit, else no limit) of an array's tasks running at once.

    Returns {run name: state}: final states, or the current ones after --detach. Ctrl-C (or a
    closed stdout) leaves the jobs running (logged as DETACH) and re-raises.
    """
    exp_dir = Path(exp_dir).resolve()
    if not exp_dir.is_dir():
        raise CkError("experiment_dir", str(exp_dir), "not a directory", "give the directory `ck scaffold` filled")
    if max_submit is not None and max_submit < 1:
        raise CkError("max_submit", max_submit, "must be >= 1", "e.g. --max-submit 4, or leave it out for no cap")
    if poll <= 0 or stagger < 0 or (retry_oom or 0) < 0:
        raise CkError("poll/stagger/retry_oom", (poll, stagger, retry_oom), "poll must be > 0, stagger and retry-oom >= 0",
                      "e.g. --poll 15 --stagger 0 --retry-oom 1")
    if array_throttle is not None and array_throttle < 1:
        raise CkError("--array-throttle", array_throttle, "must be >= 1", "e.g. --array-throttle 4")
    array = array or array_throttle is not None
    out = out or sys.stdout
    executor_obj = _make_executor(executor, exp_dir, max_local_jobs)
    if array and not executor_obj.supports_arrays:
        raise CkError("--array", f"--executor {executor_obj.name}", f"the {executor_obj.name} executor has no job arrays",
                      "drop --array/--array-throttle (local runs already queue up to max_local_jobs), or use --executor slurm")
    command = command or run_command_line(exp_dir, executor=executor_obj.name, max_submit=max_submit, stagger=stagger,
                                          poll=poll, detach=detach, resume=resume, live=live, retry_oom=retry_oom,
                                          lost_after=lost_after, rerun=rerun, retry_node_fail=retry_node_fail,
                                          array=array, array_throttle=array_throttle)
    monitor = Monitor(exp_dir, executor_obj, poll=poll, lost_after=lost_after if lost_after is not None else max(60.0, 3 * poll),
                      retry=RetryPolicy.load(exp_dir, oom=retry_oom, node_fail=retry_node_fail),
                      display=Display(out, live), command=command, array=array,
                      array_throttle=array_throttle if array_throttle is not None else max_submit)
    state = monitor.state
    if not monitor.runs:
        raise CkError("experiment_dir", str(exp_dir), f"has no scaffolded run (no */{SCRIPT_NAME})",
                      "run `ck scaffold EXP_DIR` first")
    if resume and not state.exists():
        raise CkError("--resume", str(exp_dir), f"nothing to resume: no {STATE_NAME}", f"start with `ck run {exp_dir}`")
    if state.executor not in (None, executor_obj.name):
        raise CkError("executor", executor_obj.name, f"these jobs were submitted with the {state.executor} executor",
                      f"use --executor {state.executor}")
    ended = monitor.check_rerun(rerun or [])
    to_retry = [name for name, _ in monitor.runs if (run := state.runs.get(name)) is not None and run.job_id
                and monitor.retry.decide(run.state, run.oom_retries, run.node_fail_retries).action != NO_RETRY]
    if monitor.unsubmitted() or rerun or to_retry:
        executor_obj.preflight()  # nothing is recorded before the scheduler answers
    executor_obj.resume_queue()
    state.executor = executor_obj.name
    monitor.recover_interrupted_submissions()
    if rerun:
        monitor.rerun(rerun, ended)
    if resume:
        monitor.log("RESUME", f"reattached to {len(monitor.live_runs())} live job(s)", command=command,
                    result=f"{len(monitor.unsubmitted())} run(s) to submit",
                    explanation="runs with a job are never resubmitted; runs without one are submitted")
        monitor.display.message(f"{_clock()} reattached: {len(monitor.live_runs())} live job(s), "
                                f"{len(monitor.unsubmitted())} run(s) to submit")
    state.save()
    for name in to_retry:  # ended before the policy allowed a retry (e.g. --retry-oom given now)
        monitor.apply_retry_policy(name, state.runs[name])

    pass_logged = not monitor.unsubmitted()
    try:
        while True:
            monitor.submit_pending(max_submit, stagger)
            if not pass_logged and not monitor.unsubmitted():
                pass_logged = True
                monitor.log_submission_pass()
            monitor.poll_once()
            monitor.write_summary()
            if detach:
                left = len(monitor.unsubmitted())
                monitor.log("DETACH", "monitor detached (--detach)", command=command,
                            result=f"{len(monitor.live_runs())} live job(s), {left} run(s) not yet submitted",
                            explanation=reattach_hint(exp_dir))
                monitor.display.final(monitor.rows())
                monitor.display.message(reattach_hint(exp_dir) + (f" (it submits the {left} remaining run(s))" if left else ""))
                return monitor.final_states()
            if not monitor.live_runs() and not monitor.unsubmitted():
                break
            monitor.display.table(monitor.rows(), monitor.poll_notice())
            _sleep(poll)
    except (KeyboardInterrupt, BrokenPipeError):
        state.save()
        monitor.log("DETACH", "monitor interrupted (Ctrl-C or closed output)", command=command,
                    result=f"{len(monitor.live_runs())} live job(s)", explanation=reattach_hint(exp_dir))
        try:
            monitor.display.message("\n" + reattach_hint(exp_dir))
        except BrokenPipeError:
            pass
        raise

    final = monitor.final_states()
    counts: dict[str, int] = {}
    for value in final.values():
        counts[value] = counts.get(value, 0) + 1
    monitor.write_summary()
    if not monitor.completion_logged():
        monitor.log("ALL_COMPLETE", "every job has ended", command=command,
                    result=", ".join(f"{k}={v}" for k, v in sorted(counts.items())),
                    explanation="all COMPLETED" if set(final.values()) == {"COMPLETED"} else "some runs did not complete; see the JOB_ entries")
    monitor.display.final(monitor.rows())
    return final


def current_runs(exp_dir: Path, state: RunStateFile, run_dirs: dict[str, Path], *, strict: bool = True) -> dict[str, RunState]:
    """The recorded runs, live jobs refreshed by one read-only poll (our states, the scheduler's
    times). Nothing is written or started. With strict=False a failing poll leaves them as recorded."""
    runs = {name: RunState(**vars(run)) for name, run in state.runs.items()}
    if not state.executor:
        return runs
    executor = _make_executor(state.executor, exp_dir, 1)
    live = {n: executor.job(r.job_id, run_dirs.get(n, exp_dir / n), n)
            for n, r in runs.items() if r.job_id and not is_terminal(r.state)}
    try:
        infos = executor.poll(list(live.values()))
    except CkError:
        if strict:
            raise
        return runs
    now = time.time()
    for name, job in live.items():
        if infos[job.id].state != UNKNOWN:
            apply_info(runs[name], infos[job.id], now)
    return runs


def experiment_runs(exp_dir: str | os.PathLike, *, strict: bool = False) -> dict[str, RunState]:
    """{run: RunState} as of now (see current_runs): what `ck summarize` reads."""
    exp_dir = Path(exp_dir).resolve()
    return current_runs(exp_dir, RunStateFile.load(exp_dir), dict(scaffolded_runs(exp_dir)), strict=strict)


def experiment_status(exp_dir: str | os.PathLike, *, max_local_jobs: int | None = None) -> dict:
    """One read-only poll: nothing is written, submitted or started."""
    exp_dir = Path(exp_dir).resolve()
    if not exp_dir.is_dir():
        raise CkError("experiment_dir", str(exp_dir), "not a directory", "give the directory `ck scaffold` filled")
    state = RunStateFile.load(exp_dir)
    known = dict(scaffolded_runs(exp_dir))
    for name in state.runs:  # runs that were submitted but whose directory has gone
        known.setdefault(name, exp_dir / name)
    state.runs = current_runs(exp_dir, state, known)
    rows = job_rows(list(known.items()), state)
    return {"experiment_dir": str(exp_dir), "executor": state.executor, "submitted": state.exists(), "runs": rows}
