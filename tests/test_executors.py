"""Executors on real processes and the real local SLURM, with hand-written finetune.slurm scripts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cruijff_kit.executors import (
    UNKNOWN, LocalExecutor, SlurmExecutor, SubmitError, expand_pattern, is_terminal, job_log_path,
    normalize_state, sbatch_options, time_limit_seconds,
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
    job_id = executor.submit(run_dir)
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
    job_id = executor.submit(run_dir)
    info = wait_terminal(executor, [job_id])[job_id]
    assert (info.state, info.exit_code) == ("FAILED", 3)


@pytest.mark.parametrize("kind", EXECUTORS)
def test_cancel_stops_a_running_job(kind, tmp_path):
    run_dir = make_run(tmp_path / "exp", "long", "echo started\nsleep 120")
    executor = new_executor(kind, tmp_path)
    job_id = executor.submit(run_dir)
    wait_state(executor, job_id, "RUNNING")
    t0 = time.monotonic()
    executor.cancel([job_id])
    info = wait_terminal(executor, [job_id], timeout=20)[job_id]
    assert info.state == "CANCELLED"
    assert time.monotonic() - t0 < 15


@pytest.mark.parametrize("kind", EXECUTORS)
def test_unknown_id_is_unknown_and_others_still_answer(kind, tmp_path):
    executor = new_executor(kind, tmp_path)
    run_dir = make_run(tmp_path / "exp", "ok", "true")
    job_id = executor.submit(run_dir)
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
    job_id = executor.submit(run_dir)
    assert (out_root / "ck-out-ok").is_dir()
    assert wait_terminal(executor, [job_id])[job_id].state == "COMPLETED"
    assert "hi" in job_log_path(run_dir, job_id).read_text()


def test_local_time_limit_is_timeout(tmp_path):
    run_dir = make_run(tmp_path / "exp", "slow", "sleep 60", time_limit="0:02")  # M:S = 2 seconds
    executor = new_executor("local", tmp_path)
    job_id = executor.submit(run_dir)
    info = wait_terminal(executor, [job_id], timeout=20)[job_id]
    assert info.state == "TIMEOUT"


def test_local_queue_holds_jobs_beyond_the_limit_and_survives_a_new_executor(tmp_path):
    exp = tmp_path / "exp"
    runs = [make_run(exp, f"r{i}", f"date +%s.%N > {tmp_path}/start{i}\nsleep 0.6\ndate +%s.%N > {tmp_path}/end{i}")
            for i in range(3)]
    first = LocalExecutor(tmp_path / "jobs", max_jobs=1)
    ids = [first.submit(r) for r in runs]
    states = first.states(ids)
    assert [states[i].state for i in ids] == ["RUNNING", "PENDING", "PENDING"]
    del first  # the process that queued them is gone; a new one on the same directory carries on
    second = LocalExecutor(tmp_path / "jobs", max_jobs=1)
    infos = wait_terminal(second, ids, timeout=30, poll=0.1)
    assert [infos[i].state for i in ids] == ["COMPLETED"] * 3
    spans = [(float((tmp_path / f"start{i}").read_text()), float((tmp_path / f"end{i}").read_text())) for i in range(3)]
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end  # never two at once


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
