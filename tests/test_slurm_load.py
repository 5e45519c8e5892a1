"""Load: a 300-run experiment of no-op payloads (each job only writes its metrics file) through the
real local SLURM of the test session (conftest: with accounting), under a QOS submit cap of 20. Every run reaches
COMPLETED once, none is lost or submitted twice, each poll is one squeue plus at most one sacct; as single
jobs and again as job arrays (`ck run --array`: one shape, so arrays in chunks that fit the cap).
Prints the monitor's own CPU time per poll (figures in bench/RESULTS.md, `## SLURM load`)."""

from __future__ import annotations

import io
import json
import statistics
import time

import os
import subprocess

import pytest

from conftest import SLURM_ACCOUNTING
from cruijff_kit import explog, monitor
from cruijff_kit.monitor import STATE_NAME, run_experiment
from test_executors import make_run
from test_slurm_accounting import CountingExecutor

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

RUNS, CAP = 300, 20


def run(args):
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=os.environ)


@pytest.fixture
def load_qos():
    """QOS `ckload` with MaxSubmitJobsPerUser=20, allowed for this user (the instance's `capped` stays at 2)."""
    if not SLURM_ACCOUNTING:
        pytest.skip("needs the accounting mode (CK_TEST_SLURM_ACCOUNTING=0 turned it off)")
    user = run(["id", "-un"]).stdout.strip()
    names = run(["sacctmgr", "-n", "-P", "show", "qos", "format=name"])
    assert names.returncode == 0, names.stderr
    if "ckload" not in names.stdout.split():
        add = run(["sacctmgr", "-i", "add", "qos", "ckload", f"MaxSubmitJobsPerUser={CAP}"])
        assert add.returncode == 0, add.stderr
    run(["sacctmgr", "-i", "modify", "qos", "ckload", "set", f"MaxSubmitJobsPerUser={CAP}"])
    run(["sacctmgr", "-i", "modify", "user", user, "set", "qos+=ckload"])
    return "ckload"


@pytest.mark.parametrize("arrays", [False, True], ids=["single-jobs", "arrays"])
def test_300_runs_under_a_qos_cap_of_20_complete_once_with_one_squeue_and_one_sacct_per_poll(load_qos, tmp_path, monkeypatch,
                                                                                             arrays):
    exp = tmp_path / "exp"
    names = [f"noop{i:03d}" for i in range(RUNS)]
    for name in names:
        out = tmp_path / "outputs" / f"ck-out-{name}" / "logs"
        make_run(exp, name, f"#SBATCH --qos={load_qos}\nsleep 2\nmkdir -p {out}\n"
                            f"echo '{{\"event\": \"end\", \"step\": 0, \"epoch\": 0, \"steps\": 0}}' > {out}/metrics.jsonl")
    cpu_per_poll: list[float] = []
    real_poll = monitor.Monitor.poll_once

    def timed_poll(self):
        before = time.process_time()
        real_poll(self)
        cpu_per_poll.append(time.process_time() - before)

    monkeypatch.setattr(monitor.Monitor, "poll_once", timed_poll)
    executor = CountingExecutor()
    sbatch_calls: list[list[str]] = []  # accepted and refused alike
    real_sbatch = executor._sbatch
    monkeypatch.setattr(executor, "_sbatch", lambda args, cwd: sbatch_calls.append(args) or real_sbatch(args, cwd))
    started = time.monotonic()
    final = run_experiment(exp, executor=executor, poll=1.0, live=False, out=io.StringIO(), array=arrays)
    wall = time.monotonic() - started

    assert final == {name: "COMPLETED" for name in names}
    runs = json.loads((exp / STATE_NAME).read_text())["runs"]
    ids = [runs[n]["job_id"] for n in names]
    assert len(set(ids)) == RUNS and not any(runs[n]["attempts"] for n in names)
    entries = explog.read_log(exp, "run")
    assert sum(e.action == "SUBMIT_JOB" for e in entries) == RUNS
    assert not [e for e in entries if e.action in ("SUBMIT_FAILED", "JOB_LOST")]
    assert max(executor.per_poll) <= 2
    waits = sum(e.action == "SUBMIT_WAIT" for e in entries)
    assert waits >= 1  # the cap was reached: the rest were drip-fed
    tasks = sum("_" in job_id for job_id in ids)
    arrays_submitted = sum(e.action == "SUBMIT_ARRAY" for e in entries)
    if arrays:
        assert arrays_submitted >= 1 and tasks >= 2
    else:
        assert arrays_submitted == 0 and tasks == 0
    print(f"\nload ({'arrays' if arrays else 'single jobs'}): {RUNS} runs, QOS cap {CAP}: {wall:.0f} s wall, "
          f"{arrays_submitted} arrays holding {tasks} runs, {len(sbatch_calls)} sbatch calls, {len(executor.per_poll)} polls, "
          f"queries/poll max {max(executor.per_poll)}, SUBMIT_WAIT {waits}; monitor CPU per poll: "
          f"median {1000 * statistics.median(cpu_per_poll):.1f} ms, max {1000 * max(cpu_per_poll):.1f} ms")
