"""The local SLURM with real accounting (`scripts/slurm-local start --accounting`): MariaDB +
slurmdbd, plain `sacct` from the database, a QOS that caps submissions like a production cluster.

It runs as a second instance (its own state dir and ports) beside the accounting-free one that
the other SLURM tests use, so neither restarts the other. Its MinJobAge is 2 s, as on a busy
cluster: finished jobs leave squeue within seconds and only the database knows them."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from cruijff_kit import explog
from cruijff_kit.executors import SlurmExecutor
from cruijff_kit.monitor import STATE_NAME, run_experiment
from test_executors import make_run

from conftest import SLURM_DIR, SLURM_INSTANCE_ENV

SLURM_LOCAL = Path(__file__).resolve().parent.parent / "scripts" / "slurm-local"
# beside the session's instance (CK_SLURM_DIR / CK_SLURM_PORT): its own dir and ports 20 above
ACCT_DIR = Path(f"{SLURM_DIR}-acct")
ACCT_PORT = str(int(SLURM_INSTANCE_ENV.get("CK_SLURM_PORT", "6817")) + 20)

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def accounting_env():
    env = {**os.environ, "CK_SLURM_DIR": str(ACCT_DIR), "CK_SLURM_PORT": ACCT_PORT, "CK_SLURM_LINK_CONF": "0",
           "CK_SLURM_QOS_CAP": "2", "CK_SLURM_MIN_JOB_AGE": "2"}
    proc = subprocess.run([str(SLURM_LOCAL), "start", "--accounting"], capture_output=True, text=True, env=env,
                          timeout=600)
    if proc.returncode != 0:
        reason = f"slurm-local start --accounting failed: {proc.stderr.strip()[-800:]}"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return {**env, "SLURM_CONF": str(ACCT_DIR / "slurm.conf")}


def run(args, env, **kw):
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, **kw)


def wait_gone(job_ids, env, limit=60.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and run(["squeue", "-h", "-j", ",".join(job_ids)], env).stdout.strip():
        time.sleep(0.3)


def wait_purged(job_ids, env, limit=120.0):
    """Until the controller has forgotten the jobs (squeue --states=all no longer lists them)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and run(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids)], env).stdout.strip():
        time.sleep(0.5)


def test_start_is_idempotent_and_status_shows_every_daemon(accounting_env):
    again = run([str(SLURM_LOCAL), "start", "--accounting"], accounting_env)
    assert again.returncode == 0, again.stderr
    status = run([str(SLURM_LOCAL), "status"], accounting_env).stdout
    for daemon in ("munged", "slurmctld", "slurmd", "mariadbd", "slurmdbd"):
        assert f"{daemon}: running" in status
    qos = run(["sacctmgr", "-n", "-P", "show", "qos", "capped", "format=name,maxsubmitjobsperuser"], accounting_env)
    assert qos.stdout.split() == ["capped|2"]


def test_plain_sacct_answers_from_the_database(accounting_env, tmp_path):
    sub = run(["sbatch", "--parsable", "-o", str(tmp_path / "out-%j"), "--wrap", "exit 3"], accounting_env)
    assert sub.returncode == 0, sub.stderr
    job = sub.stdout.strip()
    wait_gone([job], accounting_env)
    deadline = time.monotonic() + 30
    state = ""
    while time.monotonic() < deadline:  # the database is written asynchronously
        out = run(["sacct", "-n", "-P", "-X", "-j", job, "-o", "JobID,State,ExitCode,Account"], accounting_env)
        assert out.returncode == 0, out.stderr
        state = out.stdout.strip()
        if "FAILED" in state:
            break
        time.sleep(0.3)
    assert state == f"{job}|FAILED|3:0|ck"


def test_qos_cap_refuses_the_third_submission(accounting_env, tmp_path):
    jobs, refused = [], []
    for _ in range(3):
        sub = run(["sbatch", "--parsable", "--qos=capped", "-o", str(tmp_path / "out-%j"), "--wrap", "sleep 3"],
                  accounting_env)
        (jobs if sub.returncode == 0 else refused).append(sub)
    try:
        assert len(jobs) == 2 and len(refused) == 1
        assert "QOSMaxSubmitJobPerUserLimit" in refused[0].stderr
    finally:
        run(["scancel", *[j.stdout.strip() for j in jobs]], accounting_env)
        wait_gone([j.stdout.strip() for j in jobs], accounting_env)


@pytest.fixture
def on_accounting(accounting_env, monkeypatch):
    """This test's own sbatch/squeue/sacct talk to the accounting instance."""
    monkeypatch.setenv("SLURM_CONF", accounting_env["SLURM_CONF"])
    return accounting_env


class CountingExecutor(SlurmExecutor):
    """The real SLURM executor, recording how many scheduler queries each poll made."""

    def __init__(self):
        super().__init__()
        self.per_poll: list[int] = []

    def states(self, job_ids):
        before = self.query_count
        try:
            return super().states(job_ids)
        finally:
            self.per_poll.append(self.query_count - before)


def test_a_job_purged_from_squeue_gets_its_true_state_from_the_database(on_accounting, tmp_path):
    exp = tmp_path / "exp"
    make_run(exp, "fails", "exit 3")
    make_run(exp, "works", "sleep 1")
    executor = CountingExecutor()
    assert run_experiment(exp, executor=executor, detach=True, poll=0.5, live=False, out=io.StringIO())
    ids = [run["job_id"] for run in json.loads((exp / STATE_NAME).read_text())["runs"].values()]
    wait_purged(ids, on_accounting)  # MinJobAge=2: purged at the controller's next clean-up
    assert run(["squeue", "-h", "-t", "all", "-j", ",".join(ids)], on_accounting).stdout.strip() == ""

    executor = CountingExecutor()
    final = run_experiment(exp, executor=executor, resume=True, poll=0.5, live=False, out=io.StringIO())
    assert final == {"fails": "FAILED", "works": "COMPLETED"}
    runs = json.loads((exp / STATE_NAME).read_text())["runs"]
    assert runs["fails"]["exit_code"] == 3
    assert runs["works"]["ended_at"] - runs["works"]["running_since"] >= 1  # the database's start and end times
    assert executor.sacct_mode() == "db"
    assert executor.per_poll and max(executor.per_poll) <= 2  # one squeue + one plain sacct for both jobs


def test_six_runs_under_a_qos_cap_of_two_all_complete_once(on_accounting, tmp_path):
    exp = tmp_path / "exp"
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))
    names = [f"cap{os.getpid()}_{int(time.time()) % 100000}_{i}" for i in range(6)]  # job names of this test only
    for name in names:
        make_run(exp, name, "#SBATCH --qos=capped\nsleep 2")
    out = io.StringIO()
    final = run_experiment(exp, executor="slurm", poll=0.5, live=True, out=out)
    assert final == {name: "COMPLETED" for name in names}

    runs = json.loads((exp / STATE_NAME).read_text())["runs"]
    ids = [runs[name]["job_id"] for name in names]
    assert len(set(ids)) == 6 and not any(runs[name]["attempts"] for name in names)
    entries = explog.read_log(exp, "run")
    assert sorted(e.fields["Result"] for e in entries if e.action == "SUBMIT_JOB") == sorted(f"job {i}" for i in ids)
    waits = [e for e in entries if e.action == "SUBMIT_WAIT"]
    assert waits and all("QOSMaxSubmitJobPerUserLimit" in e.description for e in waits)
    assert not [e for e in entries if e.action == "SUBMIT_FAILED"]
    assert "WAITING: QOSMaxSubmitJobPerUserLimit" in out.getvalue()

    # the database's own record of every job with these names: these 6, never more than 2 in the queue at once
    deadline = time.monotonic() + 30
    while True:
        acct = run(["sacct", "-n", "-P", "-X", "-S", started, "--name=" + ",".join(names),
                    "-o", "JobID,Submit,End,JobName,QOS,State"], on_accounting)
        rows = [line.split("|") for line in acct.stdout.splitlines()]
        if (len(rows) >= 6 and all(r[5] == "COMPLETED" for r in rows)) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert sorted(r[3] for r in rows) == sorted(names) and {r[4] for r in rows} == {"capped"}
    events = sorted([(r[1], 1) for r in rows] + [(r[2], -1) for r in rows], key=lambda e: (e[0], e[1]))
    queued, most = 0, 0
    for _, change in events:
        queued += change
        most = max(most, queued)
    assert most <= 2


def test_usage_from_the_database_has_elapsed_cpu_hours_and_max_rss(on_accounting, tmp_path):
    import sys

    executor = SlurmExecutor()
    run_dir = make_run(tmp_path / "exp", "mem", f"{sys.executable} -c 'import time; b = bytearray(80 << 20); "
                                                f"b[::4096] = bytes(len(b) // 4096); time.sleep(7)'")
    job = executor.submit(run_dir)
    wait_gone([job.id], on_accounting, limit=120)
    deadline, usage = time.monotonic() + 30, None
    while time.monotonic() < deadline:  # the database is written asynchronously
        usage = executor.usage([job.id]).get(job.id)
        if usage and usage.max_rss_bytes and usage.elapsed_s:
            break
        time.sleep(0.5)
    assert usage is not None and usage.elapsed_s >= 7
    assert usage.cpu_hours >= usage.elapsed_s / 3600 and usage.gpu_hours == 0
    assert usage.max_rss_bytes >= 80 << 20


def test_node_failure_is_retried_by_the_policy_and_logged_with_why(on_accounting, tmp_path):
    exp = tmp_path / "exp"
    marker = tmp_path / "first-attempt-ran"
    # the first job runs until its node fails; the resubmitted one finds the marker and finishes
    make_run(exp, "victim", f"#SBATCH --no-requeue\nif [ -e {marker} ]; then exit 0; fi\ntouch {marker}\nsleep 120")
    assert run_experiment(exp, executor="slurm", detach=True, poll=0.5, live=False, out=io.StringIO())
    first = json.loads((exp / STATE_NAME).read_text())["runs"]["victim"]["job_id"]
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.3)
    node = run(["sinfo", "-h", "-N", "-o", "%N"], on_accounting).stdout.split()[0]
    try:
        assert run(["scontrol", "update", f"nodename={node}", "state=down", "reason=ck-test-node-failure"],
                   on_accounting).returncode == 0
        wait_gone([first], on_accounting)
    finally:
        run(["scontrol", "update", f"nodename={node}", "state=resume"], on_accounting)
    final = run_experiment(exp, executor="slurm", resume=True, poll=0.5, live=False, out=io.StringIO())
    assert final == {"victim": "COMPLETED"}
    state = json.loads((exp / STATE_NAME).read_text())["runs"]["victim"]
    assert state["attempts"] == [{"job_id": first, "state": "NODE_FAIL", "exit_code": state["attempts"][0]["exit_code"]}]
    assert state["node_fail_retries"] == 1 and state["job_id"] != first
    retries = [e for e in explog.read_log(exp, "run") if e.action == "RETRY_NODE_FAIL"]
    assert len(retries) == 1 and "NODE_FAIL" in retries[0].fields["Explanation"]
