"""Where jobs run: one interface, two executors, and the Job both return.

    executor = make_executor("slurm")                # or LocalExecutor(state_dir, max_jobs=2)
    executor.preflight()                             # before submitting: SLURM's controller answers (one call), else CkError
    job = executor.submit(run_dir)                   # runs <run_dir>/finetune.slurm; SubmitError if refused
    job.id, job.executor, job.run, job.log           # job.log: its stdout+stderr file (#SBATCH --output)
    job.state()                                      # our state name (job.status() for exit code, times, reason)
    job.cancel()
    executor.poll([job, ...])                        # {job id: JobInfo in our states} for many jobs, one query
    executor.job(job_id, run_dir)                    # the Job of an id recorded earlier (the monitor's state file)
    executor.find_submitted({"run": run_dir}, since)  # {run: job_id} of jobs submitted from run_dir since then
    executor.submit_array(script, {0: run_dir, ...}, throttle)   # SLURM: one job array, {task i: "JOBID_i"}

Both read the same finetune.slurm (docs/formats.md): SLURM gets it through `sbatch --parsable`
(called directly, so a refusal carries sbatch's own message); the local executor runs `bash
finetune.slurm` in the run directory and sends its stdout+stderr to the file named by `#SBATCH
--output` (with %j = the local job id), as SLURM would. The local queue is advanced by its own
supervisor process (`python -m cruijff_kit.executors supervise STATE_DIR`), so queued jobs start
when earlier ones end whether or not anybody is watching.

`executor.states(ids)` returns the scheduler's facts (SLURM's state names); `our_state` is the one
rule that turns them into the states cruijff_kit reports (a FAILED job whose log shows a CUDA
out-of-memory error is OOM). `UNKNOWN` means no query knows the id (yet); the monitor turns it into
LOST after a grace period.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cruijff_kit.inputs import load_json, read_text
from cruijff_kit.errors import CkError
from cruijff_kit.fsutil import atomic_write_json

SCRIPT_NAME = "finetune.slurm"

LIVE_STATES = frozenset({"PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "REQUEUED",
                         "RESIZING", "SIGNALING", "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                             "PREEMPTED", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED",
                             # ours: no query knows the id / sbatch refused it / FAILED with a CUDA OOM in its log
                             "LOST", "SUBMIT_FAILED", "OOM"})
UNKNOWN = "UNKNOWN"
OOM_RE = re.compile(r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED")
OOM_MESSAGE = "CUDA out of memory (see the job log)"


def normalize_state(raw: str) -> str:
    """`CANCELLED by 0` -> CANCELLED, `CANCELLED+` -> CANCELLED; SLURM's names otherwise unchanged."""
    text = raw.strip().split()[0] if raw.strip() else UNKNOWN
    return text.rstrip("+").upper()


def is_terminal(state: str) -> bool:
    return state in TERMINAL_STATES


@dataclass
class JobInfo:
    job_id: str
    state: str
    exit_code: int | None = None
    reason: str = ""
    started_at: float | None = None  # unix times from the scheduler itself (None: not started / not ended)
    ended_at: float | None = None


@dataclass
class JobUsage:
    """A job's resource use as its scheduler accounted it (None: not recorded)."""
    job_id: str
    elapsed_s: float | None = None
    cpu_hours: float | None = None  # allocated CPUs x elapsed
    gpu_hours: float | None = None  # allocated GPUs x elapsed
    max_rss_bytes: int | None = None  # the largest MaxRSS of the job's steps


_SIZE_SUFFIX = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


def _size_bytes(text: str) -> int | None:
    """sacct's MaxRSS: `123456K`, `1.5G`, `0` -> bytes; None when empty."""
    m = re.fullmatch(r"\s*([0-9.]+)([KMGT]?)\s*", text or "")
    return int(float(m.group(1)) * _SIZE_SUFFIX[m.group(2)]) if m else None


def _gpus_in_tres(tres: str) -> int:
    m = re.search(r"gres/gpu=(\d+)", tres or "")
    return int(m.group(1)) if m else 0


def parse_sacct_usage(text: str, ids: list[str]) -> dict[str, JobUsage]:
    """`sacct -P -o JobID,ElapsedRaw,CPUTimeRAW,AllocTRES,MaxRSS` lines (allocation and steps) -> per job."""
    out: dict[str, JobUsage] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 5:
            continue
        job_id, step = parts[0].split(".", 1)[0], "." in parts[0]
        if job_id not in ids:
            continue
        usage = out.setdefault(job_id, JobUsage(job_id))
        if not step:
            elapsed = float(parts[1]) if parts[1].isdigit() else None
            usage.elapsed_s = elapsed
            usage.cpu_hours = int(parts[2]) / 3600 if parts[2].isdigit() else None
            usage.gpu_hours = _gpus_in_tres(parts[3]) * elapsed / 3600 if elapsed is not None else None
        rss = _size_bytes(parts[4])
        if rss is not None:
            usage.max_rss_bytes = max(rss, usage.max_rss_bytes or 0)
    return out


def log_tail(path: Path, lines: int = 15, tail_bytes: int = 65536) -> list[str]:
    """The last `lines` lines of a (job) log; [] when it does not exist."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - tail_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return []
    return text.splitlines()[-lines:]


ERROR_LINE_RE = re.compile(
    r"Traceback \(most recent call last\)|terminate called|what\(\):|^\s*(\[rank\d+\]:\s*)?[\w.]*(Error|Exception)\b:|"
    r"Aborted|Segmentation fault|Killed|out of memory|CANCELLED AT|DUE TO (TIME LIMIT|PREEMPTION|NODE FAILURE)")


def first_error_lines(path: Path, lines: int = 6, tail_bytes: int = 1 << 20) -> list[str]:
    """The first lines of a log's last MiB that look like a cause (a traceback start, an exception line,
    a C++ `terminate called` / `what():`, a signal, a scheduler's CANCELLED line), in log order. The tail
    of a torchrun log is its summary of the processes; the cause sits earlier, in the rank that failed."""
    found = [line for line in log_tail(path, 1 << 30, tail_bytes) if ERROR_LINE_RE.search(line)]
    return [line[:300] for line in found[:lines]]


def our_state(facts: JobInfo, log: Path | None) -> JobInfo:
    """The one rule from a scheduler's facts to the state cruijff_kit reports.

    SLURM's state names (normalized) pass through; a FAILED job whose log shows a CUDA
    out-of-memory error is OOM. Used by the monitor, `ck status` and `ck summarize` alike.
    """
    state = normalize_state(facts.state) if facts.state != UNKNOWN else UNKNOWN
    if state == "FAILED" and log is not None and OOM_RE.search("\n".join(log_tail(log, 200))):
        return replace(facts, state="OOM", reason=OOM_MESSAGE)
    return replace(facts, state=state)


@dataclass(frozen=True, eq=False)
class Job:
    """One submitted job: what `Executor.submit` returns and `Executor.job` rebuilds from an id."""

    id: str
    executor: "Executor"
    run: str
    run_dir: Path

    @property
    def log(self) -> Path:
        """Its stdout+stderr file (`#SBATCH --output` with %j filled in)."""
        return job_log_path(self.run_dir, self.id)

    def status(self) -> JobInfo:
        return self.executor.poll([self])[self.id]

    def state(self) -> str:
        return self.status().state

    def cancel(self) -> None:
        self.executor.cancel([self.id])

    def __repr__(self) -> str:
        return f"Job({self.id!r}, {self.executor.name}, run={self.run!r})"


class SubmitError(Exception):
    """The scheduler refused the job; str() is its own message (e.g. sbatch's stderr)."""


class SubmitLimited(SubmitError):
    """The scheduler refused the job only because a submit limit is reached (a QOS or association
    MaxSubmitJobs cap): submitting it again when one of the user's jobs has ended will work.
    `limit` names the limit (SLURM's reason, e.g. QOSMaxSubmitJobPerUserLimit)."""

    reason = "a scheduler submit limit"
    retry_when = "a job ends"

    def __init__(self, message: str, limit: str):
        super().__init__(message)
        self.limit = limit


class SchedulerUnreachable(SubmitLimited):
    """sbatch could not connect to the controller (connection refused: nothing was submitted; a timed-out
    sbatch is not this, its job may exist): submitting again when the controller is back will work."""

    reason = "the scheduler (slurmctld) does not answer"
    retry_when = "the scheduler answers again"


# sbatch's words for "too many of your jobs are queued": the QOS / association submit caps
SUBMIT_LIMIT_RE = re.compile(r"\b(QOSMaxSubmitJob\w*|AssocMaxSubmitJob\w*|AssocGrpSubmitJobs\w*|QOSGrpSubmitJob\w*)"
                             r"|job submit limit")


def submit_refusal(message: str) -> SubmitError:
    """SubmitLimited when the refusal is a submit cap or the controller could not be reached (wait and
    retry), else SubmitError (a failure)."""
    if "Unable to contact slurm controller (connect failure)" in message:
        return SchedulerUnreachable(message, "scheduler unreachable")
    m = SUBMIT_LIMIT_RE.search(message)
    return SubmitLimited(message, m.group(1) or "submit limit") if m else SubmitError(message)


# ---------------------------------------------------------------- reading finetune.slurm

_SBATCH_RE = re.compile(r"^#SBATCH\s+(.*)$")


_SHORT_OPTIONS = {"-o": "output", "-e": "error", "-t": "time", "-J": "job-name"}


def _sbatch_words(script: Path) -> list[tuple[str | None, str]]:
    """(long option name, value) of each `#SBATCH` line before the first command; name None for a
    short option other than -o/-e/-t/-J (its meaning is not read here)."""
    found: list[tuple[str | None, str]] = []
    for line in read_text(script, SCRIPT_NAME, "re-run `ck scaffold EXP_DIR --force`").splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break  # sbatch stops reading options at the first command
        m = _SBATCH_RE.match(stripped)
        if not m:
            continue
        words = shlex.split(m.group(1), comments=True)
        if not words:
            continue
        key, value = words[0], " ".join(words[1:])
        if key.startswith("--"):
            if "=" in key:
                key, value = key.split("=", 1)
            found.append((key[2:], value))
        elif key[:2] in _SHORT_OPTIONS:
            found.append((_SHORT_OPTIONS[key[:2]], key[2:] or value))
        else:
            found.append((None, m.group(1)))
    return found


def sbatch_options(script: Path) -> dict[str, str]:
    """The `#SBATCH --key=value` / `--key value` / `-o value` lines before the first command."""
    return {key: value for key, value in _sbatch_words(script) if key is not None}


# per run, not per job: what a job array's tasks cannot each have their own of
ARRAY_PER_RUN_OPTIONS = frozenset({"job-name", "output", "error"})


def array_shape(run_dir: Path) -> tuple[tuple[str, str], ...] | None:
    """The run's sbatch resource options (every `#SBATCH` option but job-name, output and error):
    runs with equal shapes can be one job array. None: the script cannot go into one (a short
    option whose meaning is not read here, or an `--array` of its own)."""
    words = _sbatch_words(_check_run_dir(run_dir))
    if any(key is None or key == "array" for key, _ in words):
        return None
    return tuple(sorted({key: value for key, value in words if key not in ARRAY_PER_RUN_OPTIONS}.items()))


def expand_pattern(pattern: str, job_id: str, job_name: str) -> str:
    """SLURM's filename pattern: %j job id, %x job name, %u user, %% a percent sign."""
    user = os.environ.get("USER") or str(os.getuid())
    out, i = [], 0
    while i < len(pattern):
        if pattern[i] == "%" and i + 1 < len(pattern):
            code = pattern[i + 1]
            out.append({"j": job_id, "x": job_name, "u": user, "%": "%"}.get(code, "%" + code))
            i += 2
        else:
            out.append(pattern[i])
            i += 1
    return "".join(out)


def job_log_path(run_dir: Path, job_id: str, stream: str = "output") -> Path:
    """Where the job's stdout (stream "output") or stderr ("error") goes: `#SBATCH --output`/`--error`
    with %j filled in; stderr goes with stdout when there is no --error, as in SLURM (and its default)."""
    script = Path(run_dir) / SCRIPT_NAME
    options = sbatch_options(script)
    pattern = options.get(stream) or options.get("output", "slurm-%j.out")
    path = Path(expand_pattern(pattern, job_id, options.get("job-name", SCRIPT_NAME)))
    return path if path.is_absolute() else Path(run_dir) / path


def time_limit_seconds(text: str) -> int | None:
    """SLURM --time: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S; None for none/unlimited."""
    text = text.strip()
    if not text or text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days = 0
    if "-" in text:
        day_text, text = text.split("-", 1)
        days = int(day_text)
        parts = [int(x) for x in text.split(":")]
        h, m, s = (parts + [0, 0])[:3]
    else:
        parts = [int(x) for x in text.split(":")]
        if len(parts) == 1:
            h, m, s = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, s = 0, parts[0], parts[1]
        else:
            h, m, s = parts
    return days * 86400 + h * 3600 + m * 60 + s


def _check_run_dir(run_dir: Path) -> Path:
    script = Path(run_dir) / SCRIPT_NAME
    if not script.is_file():
        raise CkError("run_dir", str(run_dir), f"has no {SCRIPT_NAME}", "run `ck scaffold EXP_DIR` first")
    return script


# ---------------------------------------------------------------- the interface


class Executor(ABC):
    name: str

    @abstractmethod
    def submit(self, run_dir: Path, run: str | None = None) -> Job:
        """Start (or queue) the run's finetune.slurm; its Job (run defaults to the directory's name).
        SubmitError if the scheduler refuses it."""

    @abstractmethod
    def states(self, job_ids: list[str]) -> dict[str, JobInfo]:
        """The scheduler's facts for every id, with a bounded number of queries (one in the common
        case). Reads only: nothing is started, stopped or written."""

    @abstractmethod
    def cancel(self, job_ids: list[str]) -> None:
        """Ask for the jobs to stop; their state becomes CANCELLED."""

    @abstractmethod
    def find_submitted(self, run_dirs: dict[str, Path], since: float, exclude: set[str] = frozenset()) -> dict[str, str]:
        """{name: job id} of the newest job submitted from each run directory at or after `since`
        (unix time), ignoring the ids in `exclude`: what a monitor killed between submitting a job
        and recording its id looks for before submitting again. One query for all directories."""

    supports_arrays = False

    def submit_array(self, script: Path, runs: dict[int, Path], throttle: int | None = None) -> dict[int, str]:
        """Submit `script` (written by write_array_script) as one job array whose task i runs
        runs[i]; {i: job id of task i} ("JOBID_i"). SubmitError / SubmitLimited as submit()."""
        raise CkError("--array", self.name, "this executor has no job arrays", "drop --array, or use --executor slurm")

    def find_submitted_array(self, script: Path, since: float, exclude: set[str] = frozenset()) -> dict[int, str]:
        """{task index: job id} of the tasks of arrays submitted from `script` at or after `since`
        (find_submitted for job arrays)."""
        return {}

    def usage(self, job_ids: list[str]) -> dict[str, "JobUsage"]:
        """What the ended jobs used, from the scheduler's accounting ({} where it keeps none)."""
        return {}

    def preflight(self) -> None:
        """Check, before anything is submitted or recorded, that jobs can be submitted;
        CkError (one line with the fix) if not."""

    def resume_queue(self) -> None:
        """Make sure submitted jobs move on (a monitor calls it when it starts or reattaches)."""

    def job(self, job_id: str, run_dir: Path, run: str | None = None) -> Job:
        return Job(str(job_id), self, run or Path(run_dir).name, Path(run_dir))

    def poll(self, jobs: list[Job]) -> dict[str, JobInfo]:
        """{job id: JobInfo in our states} for all the jobs, with one states() query."""
        facts = self.states([job.id for job in jobs])
        return {job.id: our_state(facts[job.id], job.log if facts[job.id].state == "FAILED" else None) for job in jobs}


# ---------------------------------------------------------------- SLURM

SLURM_UNREACHABLE_FIX = ("start it (on a single machine, as root: `scripts/slurm-local start`), "
                         "or run from a cluster login node, or use --executor local")


def _scheduler_time(text: str) -> float | None:
    """SLURM's `2026-12-03T05:51:35` (local time) -> unix time; None for N/A, Unknown, None."""
    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


class SlurmExecutor(Executor):
    """sbatch / squeue / sacct / scancel through subprocess.

    sbatch is called directly: the script already exists, and we need sbatch's stderr verbatim
    when it refuses a job (the reason simple-slurm is not used).
    Polling: one `squeue -t all` for every id (it also reports finished jobs the controller still
    holds, with exit codes and start/end times — the same records `scontrol show job` reads); only
    ids it no longer knows go to one sacct call (plain sacct if accounting runs, else `sacct -c`,
    the job-completion file).
    """

    name = "slurm"

    def __init__(self, timeout: float = 60.0):
        self.timeout = timeout
        self._sacct_mode: str | None = None  # "db" or "jobcomp" once known (sacct_mode())
        self._database_was_away = False  # sacct could not reach slurmdbd, and sdiag has not said it caught up since
        self.query_count = 0  # scheduler commands run by states(); the benchmark reads it

    def _run(self, argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=self.timeout)
        except FileNotFoundError:
            raise CkError("executor", "slurm", f"`{argv[0]}` not found on PATH",
                          "run from a SLURM login node; on a single machine, as root, `scripts/slurm-local start` "
                          "installs and starts a local cluster; or use --executor local") from None
        except subprocess.TimeoutExpired:
            raise CkError(argv[0], " ".join(argv[1:3]), f"no answer within {self.timeout:.0f} s",
                          "check the controller: `sinfo` or `scripts/slurm-local status`") from None

    def preflight(self) -> None:
        """One `scontrol ping`: fails at once when the controller is down (sbatch would retry ~10 s)."""
        proc = self._run(["scontrol", "ping"])
        text = " ".join((proc.stdout + " " + proc.stderr).split())
        if proc.returncode != 0 or "DOWN" in text or "UP" not in text:
            answer = text.split(" ***", 1)[0] or f"scontrol ping exited {proc.returncode}"
            raise CkError("executor", "slurm", f"the SLURM controller does not answer ({answer})", SLURM_UNREACHABLE_FIX)

    def submit(self, run_dir: Path, run: str | None = None) -> Job:
        _make_log_dirs(run_dir)
        return self.job(self._sbatch([SCRIPT_NAME], Path(run_dir)), run_dir, run)

    supports_arrays = True

    def submit_array(self, script: Path, runs: dict[int, Path], throttle: int | None = None) -> dict[int, str]:
        for run_dir in runs.values():
            _make_log_dirs(run_dir)
        spec = index_ranges(sorted(runs)) + (f"%{throttle}" if throttle else "")
        job_id = self._sbatch([f"--array={spec}", script.name], script.parent)
        return {i: f"{job_id}_{i}" for i in runs}

    def _sbatch(self, args: list[str], cwd: Path) -> str:
        """`sbatch --parsable ARGS` in cwd; the job id, or submit_refusal(sbatch's message)."""
        proc = self._run(["sbatch", "--parsable", *args], cwd=cwd)
        if proc.returncode != 0:
            message = " ".join((proc.stderr.strip() or proc.stdout.strip() or f"sbatch exited {proc.returncode}").split())
            raise submit_refusal(message)
        job_id = proc.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise SubmitError(f"sbatch printed no job id: {proc.stdout.strip()!r} {proc.stderr.strip()!r}")
        return job_id

    def states(self, job_ids: list[str]) -> dict[str, JobInfo]:
        ids = [str(j) for j in job_ids]
        if not ids:
            return {}
        found = self._squeue(ids)
        missing = [j for j in ids if j not in found]
        if missing:
            found.update(self._sacct(missing))
        return {j: found.get(j, JobInfo(j, UNKNOWN, reason="no squeue or sacct record")) for j in ids}

    def _squeue(self, ids: list[str]) -> dict[str, JobInfo]:
        self.query_count += 1
        # --array and JobArrayID: an array's tasks one per line as JOBID_i, pending ones included
        proc = self._run(["squeue", "--noheader", "--array", "--states=all", "--jobs=" + ",".join(ids),
                          "--Format=JobArrayID:|,State:|,Reason:|,exit_code:|,StartTime:|,EndTime:|"])
        if proc.returncode != 0:
            if "Invalid job id" in proc.stderr:
                return {}  # a single unknown id makes squeue fail instead of printing nothing
            raise CkError("squeue", proc.returncode, " ".join(proc.stderr.split()) or "failed",
                          "check the controller: `scripts/slurm-local status` or `sinfo`")
        out: dict[str, JobInfo] = {}
        for line in proc.stdout.splitlines():
            parts = line.split("|")
            if len(parts) < 6 or parts[0].strip() not in ids:
                continue
            job_id, state, reason, code, start, end = (p.strip() for p in parts[:6])
            state = normalize_state(state)
            out[job_id] = JobInfo(job_id, state, _wait_status_exit_code(code) if is_terminal(state) else None,
                                  "" if reason in ("None", "") else reason, *_span(state, start, end))
        return out

    def sacct_mode(self) -> str:
        """"db" when the cluster has an accounting database (plain sacct), else "jobcomp" (`sacct -c`,
        the job-completion file). Asked once (`scontrol show config`), then remembered."""
        if self._sacct_mode is None:
            proc = self._run(["scontrol", "show", "config"])
            storage = re.search(r"^AccountingStorageType\s*=\s*(\S+)", proc.stdout, flags=re.M)
            if proc.returncode != 0 or storage is None:
                return "db"  # the controller did not answer: ask the database this time, decide later
            self._sacct_mode = "jobcomp" if storage.group(1).endswith("/none") else "db"
        return self._sacct_mode

    def _sacct(self, ids: list[str]) -> dict[str, JobInfo]:
        """One sacct for the ids squeue no longer knows: the database if there is one; `sacct -c` only
        when there is none, or (a second query) when slurmdbd does not answer. With the database down,
        ids the completion file does not know either raise CkError (no answer), never UNKNOWN; so does the
        database's answer while the controller still queues records for it (`sdiag`, asked only when the
        answer lacks an id or slurmdbd was away: then the answer may be missing jobs or half a record)."""
        base = ["sacct", "--noheader", "--parsable2", "--allocations", "--jobs=" + ",".join(ids),
                "--format=JobID,State,ExitCode,Start,End"]
        mode = self.sacct_mode()
        if mode == "db":
            self.query_count += 1
            proc = self._run(base)
            if proc.returncode == 0:
                found = self._parse_sacct(proc.stdout, ids)
                if (self._database_was_away or len(found) < len(ids)) and (queued := self._records_queued_for_database()):
                    # the controller still holds records for slurmdbd (it was away): the database's answer may be
                    # missing jobs or have half of one (FAILED with exit code 0 until the rest arrives): not yet
                    raise CkError("sacct", ",".join(ids[:3]), "the accounting database has not caught up yet "
                                  f"({queued} record(s) still queued at the controller for slurmdbd)",
                                  "wait: the controller sends them as slurmdbd takes them (`sdiag`: DBD Agent queue size)")
                self._database_was_away = False
                return found
            self._database_was_away = True
            db_error = " ".join(proc.stderr.split()) or f"sacct exited {proc.returncode}"
        self.query_count += 1
        proc = self._run(base + ["--completion"])
        found = self._parse_sacct(proc.stdout, ids) if proc.returncode == 0 else {}
        if mode == "db" and len(found) < len(ids):
            # no answer is not "unknown" (which becomes LOST): the monitor keeps the states it has and asks again
            unknown = [j for j in ids if j not in found]
            raise CkError("sacct", ",".join(unknown[:3]), f"the accounting database does not answer ({db_error}) "
                          "and the job-completion file does not know these jobs",
                          "check slurmdbd: `sacctmgr show cluster` or `scripts/slurm-local status`")
        return found

    def _records_queued_for_database(self) -> int:
        """How many accounting records the controller holds for slurmdbd (`sdiag`: DBD Agent queue size);
        0 when it has none or does not say."""
        self.query_count += 1
        proc = self._run(["sdiag"])
        m = re.search(r"^DBD Agent queue size:\s*(\d+)", proc.stdout, flags=re.M)
        return int(m.group(1)) if proc.returncode == 0 and m else 0

    def usage(self, job_ids: list[str]) -> dict[str, JobUsage]:
        """One sacct (database only: the completion file keeps no usage) for elapsed, CPU/GPU-hours, max RSS."""
        ids = [str(j) for j in job_ids]
        if not ids or self.sacct_mode() != "db":
            return {}
        proc = self._run(["sacct", "--noheader", "--parsable2", "--jobs=" + ",".join(ids),
                          "--format=JobID,ElapsedRaw,CPUTimeRAW,AllocTRES,MaxRSS"])
        return parse_sacct_usage(proc.stdout, ids) if proc.returncode == 0 else {}

    @staticmethod
    def _parse_sacct(text: str, ids: list[str]) -> dict[str, JobInfo]:
        out: dict[str, JobInfo] = {}
        for line in text.splitlines():
            parts = line.split("|")
            if len(parts) < 5 or parts[0] not in ids:
                continue
            state = normalize_state(parts[1])
            out[parts[0]] = JobInfo(parts[0], state, _exit_code(parts[2]), parts[1] if parts[1] != state else "",
                                    *_span(state, parts[3], parts[4]))
        return out

    def find_submitted(self, run_dirs: dict[str, Path], since: float, exclude: set[str] = frozenset()) -> dict[str, str]:
        if not run_dirs:
            return {}
        by_dir = {str(Path(d).resolve()): name for name, d in run_dirs.items()}  # sbatch records the real cwd
        names = {sbatch_options(Path(d) / SCRIPT_NAME).get("job-name", SCRIPT_NAME) for d in run_dirs.values()}
        argv = ["squeue", "--noheader", "--states=all", f"--user={os.getuid()}", "--Format=JobID:|,SubmitTime:|,WorkDir:|"]
        if not any("," in n for n in names):
            argv.append("--name=" + ",".join(sorted(names)))
        proc = self._run(argv)
        if proc.returncode != 0:
            raise CkError("squeue", proc.returncode, " ".join(proc.stderr.split()) or "failed",
                          "check the controller: `scripts/slurm-local status` or `sinfo`")
        found: dict[str, tuple[float, str]] = {}
        for line in proc.stdout.splitlines():
            job_id, submitted, work_dir = (line.rstrip().removesuffix("|").split("|", 2) + ["", ""])[:3]
            name = by_dir.get(work_dir.strip())
            try:
                when = time.mktime(time.strptime(submitted.strip(), "%Y-%m-%dT%H:%M:%S"))
            except ValueError:
                continue
            if name and job_id.strip() not in exclude and when >= since and when >= found.get(name, (-1.0, ""))[0]:
                found[name] = (when, job_id.strip())
        return {name: job_id for name, (_, job_id) in found.items()}

    def find_submitted_array(self, script: Path, since: float, exclude: set[str] = frozenset()) -> dict[int, str]:
        name = sbatch_options(script).get("job-name", script.name)
        proc = self._run(["squeue", "--noheader", "--array", "--states=all", f"--user={os.getuid()}", f"--name={name}",
                          "--Format=JobArrayID:|,SubmitTime:|,WorkDir:|"])
        if proc.returncode != 0:
            raise CkError("squeue", proc.returncode, " ".join(proc.stderr.split()) or "failed",
                          "check the controller: `scripts/slurm-local status` or `sinfo`")
        work_dir = str(Path(script).parent.resolve())
        found: dict[int, tuple[float, str]] = {}
        for line in proc.stdout.splitlines():
            job_id, submitted, where = (part.strip() for part in (line.rstrip().removesuffix("|").split("|", 2) + ["", ""])[:3])
            task = job_id.partition("_")[2]
            when = _scheduler_time(submitted)
            if where != work_dir or not task.isdigit() or when is None or when < since or job_id in exclude:
                continue
            if when >= found.get(int(task), (-1.0, ""))[0]:
                found[int(task)] = (when, job_id)
        return {task: job_id for task, (_, job_id) in found.items()}

    def cancel(self, job_ids: list[str]) -> None:
        if job_ids:
            proc = self._run(["scancel", *map(str, job_ids)])
            if proc.returncode != 0:
                raise CkError("scancel", " ".join(map(str, job_ids)), " ".join(proc.stderr.split()), "check the ids with `squeue`")


def _make_log_dirs(run_dir: Path) -> None:
    """The folders of the job's --output/--error: sbatch does not create them (the job would fail silently)."""
    options = sbatch_options(_check_run_dir(run_dir))
    for key in ("output", "error"):
        if key in options:
            parent = Path(run_dir, options[key]).parent  # absolute paths replace run_dir
            if "%" not in str(parent):
                parent.mkdir(parents=True, exist_ok=True)


def index_ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2,5,7-8" (sbatch --array's index list)."""
    parts: list[str] = []
    for i in sorted(set(indices)):
        if parts and parts[-1][1] == i - 1:
            parts[-1][1] = i
        else:
            parts.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)


_TASK_ID_MARK = "@CK_ARRAY_TASK_JOB_ID@"
_TASK_JOB_ID = '"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"'


def _task_log_word(run_dir: Path, stream: str) -> str:
    """The run's job log path (job_log_path) as a shell word in which %j is the array task's JOBID_i."""
    path = str(job_log_path(run_dir, _TASK_ID_MARK, stream))
    return _TASK_JOB_ID.join(shlex.quote(part) for part in path.split(_TASK_ID_MARK))


def _sbatch_line(key: str, value: str) -> str:
    if not value:
        return f"#SBATCH --{key}"
    return f"#SBATCH --{key}=" + (f'"{value}"' if re.search(r"\s", value) else value)


def array_script_text(script: Path, run_dirs: list[Path]) -> str:
    """The job array script that runs run_dirs[i] as task i: the runs' shared #SBATCH options, and per
    task `cd RUN_DIR && exec bash finetune.slurm` with stdout/stderr going where that finetune.slurm's
    --output/--error name (%j = JOBID_i), so the task's log is where a single job's would be and
    job_log_path(run_dir, "JOBID_i") finds it. exec: finetune.slurm becomes the task's batch shell, so
    --signal=B:... and scancel reach it as they would a single job."""
    shapes = {array_shape(run_dir) for run_dir in run_dirs}
    if len(shapes) != 1 or None in shapes:
        raise ValueError(f"runs of different shapes cannot share a job array: {[str(d) for d in run_dirs]}")
    name = Path(script).stem
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}",
             _sbatch_line("output", str(Path(script).parent.resolve() / f"{name}-%A_%a.out"))]
    lines += [_sbatch_line(key, value) for key, value in shapes.pop()]
    lines += ["", "# Written by `ck run --array`. Task i runs run i below in its directory, with the job log its",
              "# finetune.slurm names (%j = <array job id>_<i>); this file's own --output only holds this",
              "# wrapper's errors.", 'case "${SLURM_ARRAY_TASK_ID:-}" in']
    for i, run_dir in enumerate(run_dirs):
        run_dir = Path(run_dir).resolve()
        out, err = _task_log_word(run_dir, "output"), _task_log_word(run_dir, "error")
        redirect = f">> {out} 2>&1" if out == err else f">> {out} 2>> {err}"
        lines.append(f"  {i}) cd {shlex.quote(str(run_dir))} && exec bash {SCRIPT_NAME} {redirect} ;;")
    lines += ["esac", 'echo "ck array task ${SLURM_ARRAY_TASK_ID:-?}: no run for this task, or its directory is gone" >&2',
              "exit 1", ""]
    return "\n".join(lines)


def _span(state: str, start: str, end: str) -> tuple[float | None, float | None]:
    """(started_at, ended_at) from SLURM's StartTime/EndTime, which are forecasts until they happen:
    a pending job's start and a live job's end are not facts yet."""
    started = None if state == "PENDING" else _scheduler_time(start)
    return started, _scheduler_time(end) if is_terminal(state) and started is not None else None


def _wait_status_exit_code(text: str) -> int | None:
    """squeue's exit_code is the raw wait status: exit code in the high byte, signal in the low bits."""
    try:
        status = int(text.strip())
    except ValueError:
        return _exit_code(text)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else status


def _exit_code(text: str) -> int | None:
    """SLURM's `exit:signal` -> the exit code (128+signal when a signal ended it)."""
    text = text.strip()
    if not text:
        return None
    code, _, sig = text.partition(":")
    try:
        code_i, sig_i = int(code), int(sig or 0)
    except ValueError:
        return None
    return 128 + sig_i if code_i == 0 and sig_i else code_i


# ---------------------------------------------------------------- local processes

# The job's process group leader. It runs the payload with the job's log as stdout+stderr and
# writes the exit code to a file (atomically) when it ends; a watchdog enforces `#SBATCH --time`
# like SLURM (TERM to the whole group, KILL 10 s later) and leaves a marker so the state is TIMEOUT.
_WRAPPER = r"""
script=$1 out=$2 err=$3 exitfile=$4 limit=$5 marker=$6
if [ "$limit" -gt 0 ]; then
    ( sleep "$limit"; trap '' TERM; : > "$marker"; kill -TERM -- -$$; sleep 10; kill -KILL -- -$$ ) &
    watchdog=$!
fi
if [ "$out" = "$err" ]; then bash "$script" >> "$out" 2>&1; else bash "$script" >> "$out" 2>> "$err"; fi
rc=$?
echo "$rc" > "$exitfile.tmp" && mv "$exitfile.tmp" "$exitfile"
[ -n "${watchdog:-}" ] && kill "$watchdog" 2>/dev/null
exit "$rc"
"""


@dataclass
class LocalJob:
    job_id: str
    run_dir: str
    output: str
    error: str
    time_limit: int | None
    submitted_at: float
    pid: int | None = None
    proc_start: str | None = None  # /proc/<pid>/stat start time: a reused pid is not our job
    started_at: float | None = None
    ended_at: float | None = None
    cancelled: bool = False
    final: JobInfo | None = None


def _proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat, or None when the process is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


SUPERVISOR_TICK = 0.2  # seconds between the supervisor's looks at its jobs


def _try_lock(fh, attempts: int = 1) -> bool:
    for attempt in range(attempts):
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < attempts:
                time.sleep(SUPERVISOR_TICK)
    return False


class LocalExecutor(Executor):
    """Runs jobs as local process groups, at most `max_jobs` at once, the rest PENDING.

    Everything (job table, queue, each job's environment and exit code) is kept in `state_dir`.
    submit() only adds the job to the table and makes sure a supervisor runs: one detached process
    per state_dir (`python -m cruijff_kit.executors supervise STATE_DIR`, holding supervisor.lock)
    that starts queued jobs as slots free up, records how each ended, and exits when every job
    has ended. So jobs outlive the process that submitted them, and states() only reads.
    A job runs with the environment of the process that submitted it, as sbatch's default.
    """

    name = "local"

    def __init__(self, state_dir: str | os.PathLike, max_jobs: int = 2):
        if max_jobs < 1:
            raise CkError("max_local_jobs", max_jobs, "must be >= 1", "e.g. 2")
        self.state_dir = Path(state_dir)
        self.max_jobs = max_jobs
        self._table = self.state_dir / "jobs.json"
        self._supervisors: list[subprocess.Popen] = []  # ours to reap, so they never linger as zombies

    # -- the persisted job table

    def _read_table(self) -> tuple[dict, dict[str, "LocalJob"]]:
        """The local job table, or CkError naming it when it is not what this executor writes."""
        if not self._table.exists():
            return {"next_id": 1, "jobs": {}}, {}
        fix = f"delete {self._table} if no local job is running (its jobs are then forgotten)"
        data = load_json(self._table, "local job table", fix)
        try:
            jobs = {k: LocalJob(**{**v, "final": JobInfo(**v["final"]) if v.get("final") else None})
                    for k, v in data["jobs"].items()}
            int(data["next_id"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CkError("local job table", str(self._table), f"has an unexpected shape ({type(exc).__name__}: {exc})",
                          fix) from None
        return data, jobs

    @contextmanager
    def _locked(self, write: bool = True):
        """The job table under the table lock; written back (only if changed) when `write`."""
        if write:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        elif not self._table.exists():
            yield {"next_id": 1, "jobs": {}}, {}
            return
        if not write and not (self.state_dir / "jobs.lock").exists():  # a table without its lock: read it as it is
            yield self._read_table()
            return
        with open(self.state_dir / "jobs.lock", "a" if write else "r") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            data, jobs = self._read_table()
            before = json.dumps(data, sort_keys=True)
            yield data, jobs
            if write:
                data["jobs"] = {k: asdict(v) for k, v in jobs.items()}
                if json.dumps(data, sort_keys=True) != before:
                    atomic_write_json(self._table, data)

    def _exitfile(self, job_id: str) -> Path:
        return self.state_dir / f"{job_id}.exitcode"

    def _marker(self, job_id: str) -> Path:
        return self.state_dir / f"{job_id}.timeout"

    def _envfile(self, job_id: str) -> Path:
        return self.state_dir / f"{job_id}.env.json"

    # -- interface

    def submit(self, run_dir: Path, run: str | None = None) -> Job:
        run_dir = Path(run_dir).resolve()
        time_limit = time_limit_seconds(sbatch_options(_check_run_dir(run_dir)).get("time", ""))
        with self._locked() as (data, jobs):
            job_id = f"local-{data['next_id']}"
            data["next_id"] += 1
            data["max_jobs"] = self.max_jobs
            env_file = self._envfile(job_id)
            env_file.write_text(json.dumps(dict(os.environ)))
            env_file.chmod(0o600)  # it may hold API keys
            jobs[job_id] = LocalJob(job_id, str(run_dir), str(job_log_path(run_dir, job_id)),
                                    str(job_log_path(run_dir, job_id, "error")), time_limit, time.time())
        self.ensure_supervisor()
        return self.job(job_id, run_dir, run)

    def states(self, job_ids: list[str]) -> dict[str, JobInfo]:
        self._reap()
        with self._locked(write=False) as (_, jobs):
            supervised = self.supervisor_running()
            out = {}
            for job_id in map(str, job_ids):
                if job_id not in jobs:
                    out[job_id] = JobInfo(job_id, UNKNOWN, reason="not in the local job table")
                    continue
                job = replace(jobs[job_id])
                self._refresh(job)  # on a copy: what the supervisor will record
                out[job_id] = self._info(job, supervised)
            return out

    def cancel(self, job_ids: list[str]) -> None:
        with self._locked() as (_, jobs):
            for job_id in map(str, job_ids):
                job = jobs.get(job_id)
                if job is None or job.final is not None:
                    continue
                job.cancelled = True
                if job.pid is not None and _proc_start_time(job.pid) == job.proc_start:
                    try:
                        os.killpg(job.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                self._refresh(job)
        self.ensure_supervisor()

    def resume_queue(self) -> None:
        """Restart the supervisor if jobs wait for one (it died, or the machine restarted)."""
        self.ensure_supervisor()

    # -- the supervisor

    def supervisor_running(self) -> bool:
        try:
            with open(self.state_dir / "supervisor.lock", "r") as lock:
                return not _try_lock(lock)
        except FileNotFoundError:
            return False

    def ensure_supervisor(self) -> None:
        """Start a supervisor unless one runs or no job needs one. A second one started at the same
        time finds the lock taken and exits at once."""
        self._reap()
        with self._locked(write=False) as (_, jobs):
            needed = any(job.final is None for job in jobs.values())
        if not needed or self.supervisor_running():
            return
        with open(self.state_dir / "supervisor.log", "a") as log:
            self._supervisors.append(subprocess.Popen(
                [sys.executable, "-m", "cruijff_kit.executors", "supervise", str(self.state_dir.resolve())],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True))

    def _reap(self) -> None:
        self._supervisors = [p for p in self._supervisors if p.poll() is None]

    def supervise(self) -> None:
        """The supervisor's loop (run in its own process by ensure_supervisor)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "supervisor.lock", "a") as lock:
            if not _try_lock(lock, attempts=10):  # supervisor_running() holds it only for an instant
                return  # another supervisor has this directory
            children: list[subprocess.Popen] = []
            while True:
                children = [c for c in children if c.poll() is None]
                with self._locked() as (data, jobs):
                    for job in jobs.values():
                        self._refresh(job)
                    children += self._start_pending(jobs, int(data.get("max_jobs", self.max_jobs)))
                    if all(job.final is not None for job in jobs.values()):
                        # let go while the table is still locked: a submit() after this sees no supervisor
                        fcntl.flock(lock, fcntl.LOCK_UN)
                        break
                time.sleep(SUPERVISOR_TICK)
            for child in children:
                child.wait()

    # -- mechanics

    def _start_pending(self, jobs: dict[str, LocalJob], max_jobs: int) -> list[subprocess.Popen]:
        running = sum(1 for j in jobs.values() if j.pid is not None and j.final is None)
        started = []
        for job in sorted(jobs.values(), key=lambda j: int(j.job_id.split("-")[1])):
            if running >= max_jobs:
                break
            if job.pid is None and job.final is None and not job.cancelled:
                try:
                    started.append(self._launch(job))
                except OSError as exc:  # e.g. its run directory was deleted while it waited
                    job.ended_at = time.time()
                    job.final = JobInfo(job.job_id, "FAILED", None, f"could not start: {exc}", None, job.ended_at)
                    continue
                running += 1
        return started

    def _launch(self, job: LocalJob) -> subprocess.Popen:
        Path(job.output).parent.mkdir(parents=True, exist_ok=True)
        Path(job.error).parent.mkdir(parents=True, exist_ok=True)
        env_file = self._envfile(job.job_id)
        env = load_json(env_file, "job environment", f"delete {env_file} and resubmit the job") if env_file.exists() \
            else dict(os.environ)
        env["CK_JOB_ID"] = job.job_id
        argv = ["bash", "-c", _WRAPPER, "ck-local-job", SCRIPT_NAME, job.output, job.error,
                str(self._exitfile(job.job_id)), str(job.time_limit or 0), str(self._marker(job.job_id))]
        child = subprocess.Popen(argv, cwd=job.run_dir, env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        job.pid = child.pid
        job.proc_start = _proc_start_time(child.pid)
        job.started_at = time.time()
        return child

    def _refresh(self, job: LocalJob) -> None:
        if job.final is not None:
            return
        if job.pid is None:
            if job.cancelled:
                job.final, job.ended_at = JobInfo(job.job_id, "CANCELLED", None, "cancelled while pending"), time.time()
            return
        exitfile = self._exitfile(job.job_id)
        alive = job.proc_start is not None and _proc_start_time(job.pid) == job.proc_start
        if alive:  # still running, or its exit code is written and the wrapper is finishing: next look
            return
        code = _exit_code_file(exitfile)
        job.ended_at = exitfile.stat().st_mtime if exitfile.exists() else time.time()
        if self._marker(job.job_id).exists():
            final = JobInfo(job.job_id, "TIMEOUT", code, f"time limit of {job.time_limit} s reached")
        elif job.cancelled:
            final = JobInfo(job.job_id, "CANCELLED", code, "cancelled")
        elif code is None:
            final = JobInfo(job.job_id, "FAILED", None, "the process ended without writing its exit code (killed?)")
        else:
            final = JobInfo(job.job_id, "COMPLETED" if code == 0 else "FAILED", code)
        job.final = replace(final, started_at=job.started_at, ended_at=job.ended_at)

    @staticmethod
    def _info(job: LocalJob, supervised: bool = True) -> JobInfo:
        if job.final is not None:
            return job.final
        if job.pid is not None:
            return JobInfo(job.job_id, "RUNNING", started_at=job.started_at)
        return JobInfo(job.job_id, "PENDING", reason="waiting for a free local slot" if supervised else
                       "no local supervisor runs to start it: `ck run --resume EXP_DIR` restarts it")

    def find_submitted(self, run_dirs: dict[str, Path], since: float, exclude: set[str] = frozenset()) -> dict[str, str]:
        by_dir = {str(Path(d).resolve()): name for name, d in run_dirs.items()}  # submit() stores it resolved
        found: dict[str, LocalJob] = {}
        with self._locked(write=False) as (_, jobs):
            for job in jobs.values():
                name = by_dir.get(job.run_dir)
                if name and job.job_id not in exclude and job.submitted_at >= since and \
                        (name not in found or job.submitted_at >= found[name].submitted_at):
                    found[name] = job
        return {name: job.job_id for name, job in found.items()}


def _exit_code_file(exitfile: Path) -> int | None:
    """The exit code the job wrapper wrote; None when absent or not a number (a torn write).
    (Not `_exit_code`: that name is SLURM's `exit:signal` parser above, which this once shadowed.)"""
    try:
        return int(read_text(exitfile, "exit code file").strip())
    except (CkError, ValueError):
        return None


def make_executor(kind: str, *, state_dir: str | os.PathLike | None = None, max_jobs: int | None = None) -> Executor:
    if kind == "slurm":
        return SlurmExecutor()
    if kind == "local":
        if state_dir is None:
            raise ValueError("the local executor needs a state_dir")
        return LocalExecutor(state_dir, max_jobs or 2)
    raise CkError("executor", kind, "unknown executor", "use local or slurm")


if __name__ == "__main__":
    if sys.argv[1:2] != ["supervise"] or len(sys.argv) != 3:
        sys.exit("usage: python -m cruijff_kit.executors supervise STATE_DIR")
    LocalExecutor(sys.argv[2]).supervise()
