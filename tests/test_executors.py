"""Executors on real processes and the real local SLURM, with hand-written finetune.slurm scripts."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from cruijff_kit.errors import CkError
from cruijff_kit.executors import (
    UNKNOWN, Job, JobInfo, LocalExecutor, SlurmExecutor, SubmitError, expand_pattern, is_terminal, job_log_path,
    normalize_state, our_state, sbatch_options, time_limit_seconds,
)

EXECUTORS = ["local", pytest.param("slurm", marks=pytest.mark.slurm)]


def make_run(exp_dir: Path, name: str, body: str, *, time_limit: str | None = None, gres: str | None = None,
             out_root: Path | None = None) -> Path:
    """A run directory whose finetune.slurm follows the ARCHITECTURE contract (absolute --output/--error)."""
    out_dir = (out_root or exp_dir.parent / "outputs") / f"ck-out-{name}"
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --output={out_dir}/slurm-%j.out",
             f"#SBATCH --error={out_dir}/slurm-%j.out", "#SBATCH --mem=64M"]
    if time_limit:
        lines.append(f"#SBATCH --time={time_limit}")
    if gres:
        lines.append(f"#SBATCH --gres={gres}")
    run_dir = exp_dir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "finetune.slurm").write_text("\n".join(lines) + "\n\n" + body.strip() + "\n")
    return run_dir


def new_executor(kind: str, tmp_path: Path, max_jobs: int = 2):
    return LocalExecutor(tmp_path / ".ck-local-jobs", max_jobs=max_jobs) if kind == "local" else SlurmExecutor()


def wait_terminal(executor, job_ids, timeout=60.0, poll=0.2):
    deadline = time.monotonic() + timeout
    while True:
        infos = executor.states(job_ids)
        if all(is_terminal(i.state) for i in infos.values()) or time.monotonic() > deadline:
            return infos
        time.sleep(poll)


def wait_state(executor, job_id, wanted, timeout=30.0, poll=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = executor.states([job_id])[job_id]
        if info.state == wanted:
            return info
        time.sleep(poll)
    raise AssertionError(f"job {job_id} never reached {wanted}; last {info}")


@pytest.mark.parametrize("kind", EXECUTORS)
def test_completed_job_logs_where_sbatch_output_says(kind, tmp_path):
    exp = tmp_path / "exp"
    run_dir = make_run(exp, "ok", 'echo "job=${CK_JOB_ID:-$SLURM_JOB_ID} cwd=$PWD"\necho to-stderr >&2')
    executor = new_executor(kind, tmp_path)
    job_id = executor.submit(run_dir).id
    info = wait_terminal(executor, [job_id])[job_id]
    assert (info.state, info.exit_code) == ("COMPLETED", 0)
    log = job_log_path(run_dir, job_id)
    assert log == tmp_path / "outputs" / "ck-out-ok" / f"slurm-{job_id}.out"
    text = log.read_text()
    assert f"job={job_id} cwd={run_dir.resolve()}" in text
    assert "to-stderr" in text


@pytest.mark.parametrize("kind", EXECUTORS)
def test_nonzero_exit_is_failed_with_its_exit_code(kind, tmp_path):
    run_dir = make_run(tmp_path / "exp", "bad", "echo going down\nexit 3")
    executor = new_executor(kind, tmp_path)
    job_id = executor.submit(run_dir).id
    info = wait_terminal(executor, [job_id])[job_id]
    assert (info.state, info.exit_code) == ("FAILED", 3)


@pytest.mark.parametrize("kind", EXECUTORS)
def test_cancel_stops_a_running_job(kind, tmp_path):
    run_dir = make_run(tmp_path / "exp", "long", "echo started\nsleep 120")
    executor = new_executor(kind, tmp_path)
    job_id = executor.submit(run_dir).id
    wait_state(executor, job_id, "RUNNING")
    executor.cancel([job_id])
    info = wait_terminal(executor, [job_id], timeout=60)[job_id]
    assert info.state == "CANCELLED"


@pytest.mark.parametrize("kind", EXECUTORS)
def test_unknown_id_is_unknown_and_others_still_answer(kind, tmp_path):
    executor = new_executor(kind, tmp_path)
    run_dir = make_run(tmp_path / "exp", "ok", "true")
    job_id = executor.submit(run_dir).id
    bogus = "local-999" if kind == "local" else "99999999"
    infos = wait_terminal(executor, [job_id], timeout=30)
    infos = executor.states([job_id, bogus])
    assert infos[bogus].state == UNKNOWN
    assert infos[job_id].state == "COMPLETED"


@pytest.mark.slurm
def test_sbatch_refusal_raises_with_sbatchs_message(tmp_path):
    run_dir = make_run(tmp_path / "exp", "gpu", "true", gres="gpu:1")
    with pytest.raises(SubmitError, match="Invalid generic resource"):
        SlurmExecutor().submit(run_dir)


@pytest.mark.slurm
def test_slurm_creates_the_output_directory_before_submitting(tmp_path):
    out_root = tmp_path / "deep" / "not" / "there"
    run_dir = make_run(tmp_path / "exp", "ok", "echo hi", out_root=out_root)
    executor = SlurmExecutor()
    job_id = executor.submit(run_dir).id
    assert (out_root / "ck-out-ok").is_dir()
    assert wait_terminal(executor, [job_id])[job_id].state == "COMPLETED"
    assert "hi" in job_log_path(run_dir, job_id).read_text()


def test_local_time_limit_is_timeout(tmp_path):
    run_dir = make_run(tmp_path / "exp", "slow", "sleep 60", time_limit="0:02")  # M:S = 2 seconds
    executor = new_executor("local", tmp_path)
    job_id = executor.submit(run_dir).id
    info = wait_terminal(executor, [job_id], timeout=20)[job_id]
    assert info.state == "TIMEOUT"


def test_local_queue_runs_to_the_end_with_nobody_polling(tmp_path):
    exp = tmp_path / "exp"
    runs = [make_run(exp, f"r{i}", f"date +%s.%N > {tmp_path}/start{i}\nsleep 0.6\ndate +%s.%N > {tmp_path}/end{i}")
            for i in range(3)]
    first = LocalExecutor(tmp_path / "jobs", max_jobs=1)
    ids = [first.submit(r).id for r in runs]
    del first  # the process that queued them asks nothing more; the supervisor starts each in turn
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"end{i}").exists() for i in range(3)):
        assert time.monotonic() < deadline, "the queued jobs never all ran"
        time.sleep(0.2)
    spans = [(float((tmp_path / f"start{i}").read_text()), float((tmp_path / f"end{i}").read_text())) for i in range(3)]
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end  # never two at once, in submission order
    later = LocalExecutor(tmp_path / "jobs", max_jobs=1)
    infos = wait_terminal(later, ids, timeout=30, poll=0.1)
    assert [infos[i].state for i in ids] == ["COMPLETED"] * 3
    deadline = time.monotonic() + 30
    while later.supervisor_running():  # it leaves once every job has ended
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_local_states_only_read(tmp_path):
    run_dir = make_run(tmp_path / "exp", "ok", "true")
    executor = LocalExecutor(tmp_path / "jobs", max_jobs=1)
    assert executor.states(["local-1"])["local-1"].state == UNKNOWN
    assert not (tmp_path / "jobs").exists()  # asking about a directory with no jobs creates nothing
    job = executor.submit(run_dir)
    wait_terminal(executor, [job.id])
    def snapshot() -> dict:
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "jobs").iterdir()}

    files = None
    while executor.supervisor_running() or files != snapshot():  # the supervisor has finished its last write
        files = snapshot()
        time.sleep(0.3)
    for _ in range(3):
        assert executor.states([job.id, "local-9"])[job.id].state == "COMPLETED"
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "jobs").iterdir()} == files


def test_local_job_runs_with_the_submitters_environment(tmp_path, monkeypatch):
    exp = tmp_path / "exp"
    blocker = make_run(exp, "first", "sleep 1")
    second = make_run(exp, "second", f"echo \"value=$CK_TEST_VALUE\" > {tmp_path}/seen")
    executor = LocalExecutor(tmp_path / "jobs", max_jobs=1)
    monkeypatch.setenv("CK_TEST_VALUE", "from-first")
    executor.submit(blocker)  # its supervisor inherits this environment
    monkeypatch.setenv("CK_TEST_VALUE", "from-second")
    job = executor.submit(second)
    wait_terminal(executor, [job.id], timeout=30)
    assert (tmp_path / "seen").read_text().strip() == "value=from-second"


@pytest.mark.parametrize("kind", EXECUTORS)
def test_submit_returns_a_job_with_its_run_log_state_and_cancel(kind, tmp_path):
    run_dir = make_run(tmp_path / "exp", "named", "echo hello\nsleep 120")
    executor = new_executor(kind, tmp_path)
    job = executor.submit(run_dir, "the_run")
    assert isinstance(job, Job) and job.executor is executor and job.run == "the_run"
    assert job.log == tmp_path / "outputs" / "ck-out-named" / f"slurm-{job.id}.out"
    wait_state(executor, job.id, "RUNNING")
    assert job.state() == "RUNNING"
    deadline = time.monotonic() + 20
    while not (job.log.exists() and "hello" in job.log.read_text()):  # the job's output goes to job.log
        assert time.monotonic() < deadline
        time.sleep(0.1)
    again = executor.job(job.id, run_dir)  # rebuilt from a recorded id, as the monitor does
    assert again.run == "named" and again.log == job.log
    job.cancel()
    deadline = time.monotonic() + 20
    while (info := again.status()).state != "CANCELLED":
        assert time.monotonic() < deadline, info
        time.sleep(0.2)


@pytest.mark.parametrize("kind", EXECUTORS)
def test_scheduler_start_and_end_times_give_the_elapsed_time(kind, tmp_path):
    run_dir = make_run(tmp_path / "exp", "timed", "sleep 2")
    executor = new_executor(kind, tmp_path)
    job = executor.submit(run_dir)
    info = wait_terminal(executor, [job.id])[job.id]
    assert info.state == "COMPLETED"
    assert info.started_at is not None and info.ended_at is not None
    assert info.ended_at - info.started_at >= 1  # SLURM's times are whole seconds


OOM_LINE = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


@pytest.mark.parametrize("scheduler_state, log_text, ours", [
    ("FAILED", OOM_LINE, "OOM"),
    ("FAILED", "Traceback: KeyError", "FAILED"),
    ("FAILED", None, "FAILED"),  # no log at all
    ("COMPLETED", OOM_LINE, "COMPLETED"),  # a caught OOM that the job survived is not a failure
    ("CANCELLED by 0", "", "CANCELLED"),
    ("OUT_OF_MEMORY", "", "OUT_OF_MEMORY"),  # SLURM's own host-memory kill keeps its name
    (UNKNOWN, "", UNKNOWN),
])
def test_our_state_is_the_one_rule_from_scheduler_facts(scheduler_state, log_text, ours, tmp_path):
    log = tmp_path / "slurm-1.out"
    if log_text is not None:
        log.write_text("step 1\n" + log_text + "\n")
    info = our_state(JobInfo("1", scheduler_state, 1, "x", 10.0, 20.0), log)
    assert info.state == ours
    assert (info.started_at, info.ended_at, info.exit_code) == (10.0, 20.0, 1)
    assert ("out of memory" in info.reason) == (ours == "OOM")


def test_slurm_preflight_names_the_fix_when_no_controller_answers(tmp_path, monkeypatch):
    (tmp_path / "empty.conf").write_text("")  # no controller configured: scontrol fails at once
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "empty.conf"))
    with pytest.raises(CkError) as err:  # (without SLURM installed: scontrol is not found, same advice)
        SlurmExecutor().preflight()
    assert "scripts/slurm-local" in str(err.value) and "\n" not in str(err.value)
    if shutil.which("scontrol"):
        assert "controller does not answer" in str(err.value)


@pytest.mark.slurm
def test_slurm_preflight_passes_when_the_controller_answers():
    SlurmExecutor().preflight()


def test_sbatch_options_and_patterns(tmp_path):
    script = tmp_path / "finetune.slurm"
    script.write_text("#!/bin/bash\n#SBATCH --output=/o/slurm-%j.out\n#SBATCH -t 1:30\n#SBATCH --job-name x  # c\n"
                      "echo hi\n#SBATCH --mem=1G\n")
    opts = sbatch_options(script)
    assert opts == {"output": "/o/slurm-%j.out", "time": "1:30", "job-name": "x"}  # nothing after the first command
    assert expand_pattern("/o/%x-%j.out%%", "42", "x") == "/o/x-42.out%"
    assert [time_limit_seconds(t) for t in ["1", "1:30", "01:00:00", "2-0", "1-00:00:10", "UNLIMITED"]] == \
        [60, 90, 3600, 172800, 86410, None]
    assert [normalize_state(s) for s in ["CANCELLED by 0", "COMPLETED", "CANCELLED+"]] == ["CANCELLED", "COMPLETED", "CANCELLED"]


def test_job_log_path_of_stderr_follows_error_else_output(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    script = run_dir / "finetune.slurm"
    script.write_text("#!/bin/bash\n#SBATCH --job-name=r\n#SBATCH --output=/abs/%x-%j.out\n#SBATCH -e err-%j.log\necho\n")
    assert job_log_path(run_dir, "7") == Path("/abs/r-7.out")
    assert job_log_path(run_dir, "7", "error") == run_dir / "err-7.log"
    script.write_text("#!/bin/bash\n#SBATCH --output=/abs/%j.out\necho\n")
    assert job_log_path(run_dir, "7", "error") == Path("/abs/7.out")


def test_local_job_that_cannot_start_fails_and_the_queue_goes_on(tmp_path):
    exp = tmp_path / "exp"
    gone = make_run(exp, "gone", "true")
    after = make_run(exp, "after", "true")
    executor = LocalExecutor(tmp_path / "jobs", max_jobs=1)
    blocker = executor.submit(make_run(exp, "blocker", "sleep 1"))
    doomed = executor.submit(gone)
    (gone / "finetune.slurm").unlink()
    gone.rmdir()  # removed while it waited for a slot
    last = executor.submit(after)
    infos = wait_terminal(executor, [blocker.id, doomed.id, last.id], timeout=30)
    assert infos[doomed.id].state == "FAILED" and "could not start" in infos[doomed.id].reason
    assert infos[last.id].state == "COMPLETED"


def test_a_killed_supervisor_is_reported_and_restarted_by_resume_queue(tmp_path):
    exp = tmp_path / "exp"
    executor = LocalExecutor(tmp_path / "jobs", max_jobs=1)
    first = executor.submit(make_run(exp, "first", "sleep 1"))
    wait_state(executor, first.id, "RUNNING")
    second = executor.submit(make_run(exp, "second", "true"))
    [supervisor] = executor._supervisors  # the one this process started
    supervisor.kill()
    supervisor.wait()
    wait_state(executor, first.id, "COMPLETED")  # a running job does not need its supervisor
    info = second.status()
    assert info.state == "PENDING" and "ck run --resume" in info.reason
    executor.resume_queue()
    assert wait_terminal(executor, [second.id], timeout=30)[second.id].state == "COMPLETED"


@given(code=st.integers(0, 255), signal_number=st.integers(0, 64))
def test_sacct_exit_codes_are_parsed_from_its_exit_signal_text(code, signal_number):
    """sacct's ExitCode `code:signal` (the database and the completion file alike): a purged job's exit code."""
    line = f"7|FAILED|{code}:{signal_number}|2026-12-03T09:06:29|2026-12-03T09:06:31"
    info = SlurmExecutor._parse_sacct(line, ["7"])["7"]
    assert info.exit_code == (128 + signal_number if code == 0 and signal_number else code)
    assert info.ended_at - info.started_at == 2
