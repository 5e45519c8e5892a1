"""Faults on the real local SLURM, while `ck run` watches: the controller (slurmctld) stopped and
restarted, the accounting database (slurmdbd) down while jobs end, and a node lost mid-training on
the multi-node cluster. Each kill targets this test session's own daemons, by the pid in its
instance's run/ directory (or, for the node, the processes of that node's network namespace).

What must hold: no answer is never taken for an answer (no run becomes FAILED, LOST or is
resubmitted because a daemon is away), the state file stays whole, the monitor says what is away
and carries on when it is back, and every run ends COMPLETED (or with its true state) once.
The figures (how long the monitor waited, recovery time) are in bench/RESULTS.md under "Faults".
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cruijff_kit import explog
from cruijff_kit.monitor import STATE_NAME, run_experiment
from conftest import SLURM_DIR, slurm_local
from test_executors import make_run
from test_slurm_accounting import ACCT_DIR, accounting_env, on_accounting, wait_purged  # noqa: F401  (fixtures)
from test_slurm_multinode import MULTI_CONF, SLURM_LOCAL, two_nodes  # noqa: F401  (fixture)

pytestmark = pytest.mark.slurm

CK = [sys.executable, "-m", "cruijff_kit"]
POLL = 0.5
LIVE_STATES = {"PENDING", "RUNNING"}


class TerminalOut(io.StringIO):
    """Captures what `ck run` draws on a terminal: the live table, redrawn in place."""

    def isatty(self) -> bool:
        return True


class MonitorThread(threading.Thread):
    """run_experiment in the background, as `ck run` in a second terminal."""

    def __init__(self, exp: Path, **kw):
        super().__init__(daemon=True)
        self.exp, self.kw, self.out = exp, kw, TerminalOut()
        self.final: dict | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.final = run_experiment(self.exp, executor="slurm", poll=POLL, live=True, out=self.out, **self.kw)
        except BaseException as exc:  # noqa: BLE001  (reported by the test)
            self.error = exc


def read_runs(exp: Path) -> dict:
    """The state file, parsed: a torn or half-written file fails the test here."""
    return json.loads((exp / STATE_NAME).read_text())["runs"]


def log_entries(exp: Path, action: str) -> list:
    return [e for e in explog.read_log(exp, "run") if e.action == action]


def wait_until(condition, limit: float, what: str, step: float = 0.3) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


def kill_daemon(pid_file: Path, env: dict | None = None) -> int:
    """SIGTERM to the daemon named by the pid file (this session's instance only); waits until it is gone."""
    pid = int(pid_file.read_text())
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or
               Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] in "ZX", 30, f"{pid_file.name} to stop")
    return pid


def assert_no_false_end(exp: Path) -> dict:
    runs = read_runs(exp)
    assert {r["state"] for r in runs.values()} <= LIVE_STATES, runs
    return runs


# ---------------------------------------------------------------- slurmctld stopped and restarted


def test_slurmctld_stopped_and_restarted_while_jobs_run(tmp_path):
    exp = tmp_path / "exp"
    for name in ("a", "b"):
        make_run(exp, name, "sleep 40")
    monitor = MonitorThread(exp)
    monitor.start()
    wait_until(lambda: (exp / STATE_NAME).exists() and {r["state"] for r in read_runs(exp).values()} == {"RUNNING"},
               60, "both jobs to run")
    ids = {name: run["job_id"] for name, run in read_runs(exp).items()}

    kill_daemon(SLURM_DIR / "run" / "slurmctld.pid")
    stopped_at = time.monotonic()
    try:
        wait_until(lambda: log_entries(exp, "POLL_FAILED"), 90, "the monitor to notice")
        noticed_s = time.monotonic() - stopped_at
        while time.monotonic() - stopped_at < 25:  # the outage: the monitor keeps polling, the state file stays whole
            runs = assert_no_false_end(exp)
            assert {name: run["job_id"] for name, run in runs.items()} == ids
            assert monitor.is_alive()
            time.sleep(0.5)
    finally:
        restarted_at = time.monotonic()
        start = slurm_local("start", timeout=120)
    assert start.returncode == 0, start.stderr
    wait_until(lambda: log_entries(exp, "POLL_RECOVERED") or not monitor.is_alive(), 120, "the monitor to carry on")
    carried_on_s = time.monotonic() - restarted_at
    monitor.join(timeout=180)
    assert not monitor.is_alive() and monitor.error is None, monitor.error
    output = monitor.out.getvalue()

    assert monitor.final == {"a": "COMPLETED", "b": "COMPLETED"}, output[-3000:]
    runs = read_runs(exp)
    assert {name: run["job_id"] for name, run in runs.items()} == ids  # the same jobs: nothing resubmitted
    assert not any(run["attempts"] for run in runs.values())
    [failed] = log_entries(exp, "POLL_FAILED")
    assert "the scheduler (slurmctld) does not answer" in failed.description
    [recovered] = log_entries(exp, "POLL_RECOVERED")
    assert recovered.description.startswith("polling works again after")
    assert len(log_entries(exp, "SUBMIT_JOB")) == 2 and len(log_entries(exp, "ALL_COMPLETE")) == 1
    assert not [e for e in explog.read_log(exp, "run") if e.action.startswith(("JOB_", "RETRY", "SUBMIT_FAILED"))]
    assert "the scheduler (slurmctld) unreachable, states kept as last seen" in output
    assert "! no answer from the scheduler (slurmctld) since" in output  # the live table says so while it lasts
    assert "polling works again after" in output
    print(f"\nslurmctld down {restarted_at - stopped_at:.0f} s: first failed poll logged {noticed_s:.0f} s after the stop; "
          f"'{recovered.description}' ({carried_on_s:.0f} s after the restart began)")


def test_a_run_waiting_under_a_qos_cap_stays_waiting_while_slurmctld_is_down(on_accounting, tmp_path):
    """Under a QOS cap of 2 the third run WAITs and is offered to sbatch at every poll; while the controller is
    down sbatch cannot connect: that is a wait, not SUBMIT_FAILED, and the run is submitted once it is back."""
    exp = tmp_path / "exp"
    names = ["q1", "q2", "q3"]
    for name in names:
        make_run(exp, name, "#SBATCH --qos=capped\nsleep 25")
    monitor = MonitorThread(exp)
    monitor.start()
    wait_until(lambda: (exp / STATE_NAME).exists() and sorted(r["state"] for r in read_runs(exp).values())
               == ["RUNNING", "RUNNING", "WAITING"], 60, "two jobs running and one run waiting")
    kill_daemon(ACCT_DIR / "run" / "slurmctld.pid")
    try:
        wait_until(lambda: any("scheduler unreachable" in r["message"] for r in read_runs(exp).values()), 90,
                   "a submission to fail to connect")
        [waiting] = [name for name, run in read_runs(exp).items() if run["state"] == "WAITING"]
        assert read_runs(exp)[waiting]["job_id"] is None
    finally:
        start = subprocess.run([str(SLURM_LOCAL), "start", "--accounting"], capture_output=True, text=True,
                               env=on_accounting, timeout=300)
    assert start.returncode == 0, start.stderr
    monitor.join(timeout=240)
    assert not monitor.is_alive() and monitor.error is None, monitor.error
    assert monitor.final == {name: "COMPLETED" for name in names}, monitor.out.getvalue()[-3000:]
    runs = read_runs(exp)
    assert len({run["job_id"] for run in runs.values()}) == 3 and not any(run["attempts"] for run in runs.values())
    assert len(log_entries(exp, "SUBMIT_JOB")) == 3 and not log_entries(exp, "SUBMIT_FAILED")
    waits = [e.description for e in log_entries(exp, "SUBMIT_WAIT")]
    assert f"{waiting} waits to be submitted (scheduler unreachable)" in waits, waits
    assert "retried when the scheduler answers again" in monitor.out.getvalue()


# ---------------------------------------------------------------- slurmdbd down while jobs end


@pytest.fixture
def without_completion_file(on_accounting, tmp_path, monkeypatch):
    """The accounting instance seen by clients as a cluster with no job-completion file (common on
    production clusters): with slurmdbd down, nothing but squeue answers."""
    conf = Path(on_accounting["SLURM_CONF"]).read_text().replace(
        f"JobCompLoc={ACCT_DIR}/log/jobcomp.txt", f"JobCompLoc={tmp_path}/no-jobcomp.txt")
    assert f"JobCompLoc={tmp_path}/no-jobcomp.txt" in conf
    (tmp_path / "slurm.conf").write_text(conf)
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    return {**on_accounting, "SLURM_CONF": str(tmp_path / "slurm.conf")}


def test_slurmdbd_down_while_jobs_end_is_waited_out_never_a_false_failure(without_completion_file, tmp_path):
    env = without_completion_file
    exp = tmp_path / "exp"
    make_run(exp, "fails", "sleep 4\nexit 3")
    make_run(exp, "works", "sleep 4")
    kill_daemon(ACCT_DIR / "run" / "slurmdbd.pid")  # before the jobs start: every record of theirs waits at the controller
    try:
        run_experiment(exp, executor="slurm", detach=True, poll=POLL, live=False, out=io.StringIO())
        ids = [run["job_id"] for run in read_runs(exp).values()]
        wait_purged(ids, env)  # the jobs ended and left squeue (MinJobAge=2): only the database knows them now
        assert subprocess.run(["squeue", "-h", "-t", "all", "-j", ",".join(ids)], capture_output=True, text=True,
                              env=env).stdout.strip() == ""
        # a short --lost-after: a job nobody knows would be LOST within seconds; one the database cannot be asked about is not
        monitor = MonitorThread(exp, resume=True, lost_after=3)
        monitor.start()
        wait_until(lambda: log_entries(exp, "POLL_FAILED"), 60, "the monitor to notice")
        for _ in range(16):
            assert_no_false_end(exp)
            assert monitor.is_alive()
            time.sleep(0.5)
    finally:
        start = subprocess.run([str(SLURM_LOCAL), "start", "--accounting"], capture_output=True, text=True,
                               env={**env, "SLURM_CONF": str(ACCT_DIR / "slurm.conf")}, timeout=300)
    assert start.returncode == 0, start.stderr
    monitor.join(timeout=180)
    assert not monitor.is_alive() and monitor.error is None, monitor.error
    output = monitor.out.getvalue()

    assert monitor.final == {"fails": "FAILED", "works": "COMPLETED"}, output[-3000:]
    runs = read_runs(exp)
    assert runs["fails"]["exit_code"] == 3 and runs["works"]["exit_code"] == 0  # the database's own records
    [failed] = log_entries(exp, "POLL_FAILED")
    assert "the accounting database (slurmdbd) does not answer" in failed.description
    assert len(log_entries(exp, "POLL_RECOVERED")) == 1
    changes = [(e.fields["Previous"], e.fields["Current"]) for e in log_entries(exp, "STATE_CHANGE")]
    assert not [c for c in changes if c[1] in ("LOST", "UNKNOWN")], changes
    assert "the accounting database (slurmdbd) unreachable" in output and "! no answer from the accounting database (slurmdbd) since" in output
    print(f"\nslurmdbd down: '{log_entries(exp, 'POLL_RECOVERED')[0].description}'; no run LOST with --lost-after 3")


def test_slurmdbd_down_falls_back_to_the_completion_file(on_accounting, tmp_path):
    exp = tmp_path / "exp"
    make_run(exp, "fails", "sleep 2\nexit 3")
    make_run(exp, "works", "sleep 2")
    run_experiment(exp, executor="slurm", detach=True, poll=POLL, live=False, out=io.StringIO())
    ids = [run["job_id"] for run in read_runs(exp).values()]
    kill_daemon(ACCT_DIR / "run" / "slurmdbd.pid")
    try:
        wait_purged(ids, on_accounting)
        final = run_experiment(exp, executor="slurm", resume=True, poll=POLL, lost_after=3, live=False, out=io.StringIO())
    finally:
        start = subprocess.run([str(SLURM_LOCAL), "start", "--accounting"], capture_output=True, text=True,
                               env=on_accounting, timeout=300)
    assert start.returncode == 0, start.stderr
    assert final == {"fails": "FAILED", "works": "COMPLETED"}
    runs = read_runs(exp)
    assert runs["fails"]["exit_code"] == 3 and runs["works"]["exit_code"] == 0
    assert not log_entries(exp, "POLL_FAILED")  # `sacct -c` answered in the same poll


# ---------------------------------------------------------------- a node lost mid-training (multi-node cluster)


def power_off(namespace: str) -> list[int]:
    """Every process of the node (its slurmd, the job's slurmstepd and training processes): SIGKILL, as a
    node that loses power; nothing of it answers or writes again."""
    pids = [int(p) for p in subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True,
                                           check=True).stdout.split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def squeue_field(job_id: str, field: str, env: dict) -> str:
    return subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", field], capture_output=True, text=True,
                          env=env, timeout=30).stdout.strip()


@pytest.mark.slow
@pytest.mark.training
@pytest.mark.parametrize("requeue", [pytest.param(True, marks=pytest.mark.extended), False],
                         ids=["slurm-requeues", "policy-resubmits"])  # SLURM's requeue + resume: also test_slurm.py
def test_node_lost_mid_training_resumes_on_the_node_left(tmp_path, two_nodes, requeue):  # noqa: F811
    """A scaffolded job is `--requeue`: SLURM requeues it itself (same job id). One that is not (a site
    that forbids requeue) ends NODE_FAIL and the retry policy resubmits it (a new job, RETRY_NODE_FAIL).
    Either way it resumes from its last epoch checkpoint on the node that is left."""
    from test_scaleout_runs import ck_env, design_and_scaffold

    env = ck_env(tmp_path, SLURM_CONF=two_nodes["SLURM_CONF"])
    exp = design_and_scaffold(tmp_path, env, "nodeloss", "--N", "800", "--val-size", "32", "--epochs", "2",
                              "--max-steps-per-epoch", "30")
    script = exp / "parity_run" / "finetune.slurm"
    assert "#SBATCH --requeue\n" in script.read_text()
    if not requeue:
        script.write_text(script.read_text().replace("#SBATCH --requeue\n", "#SBATCH --no-requeue\n"))
    out_dir = tmp_path / "scratch" / "ck-outputs" / "nodeloss" / "ck-out-parity_run"

    def metrics() -> list[dict]:
        path = out_dir / "logs" / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def scontrol_node(node: str, state: str) -> None:
        done = subprocess.run(["scontrol", "update", f"nodename={node}", f"state={state}", "reason=ck-test-placement"],
                              capture_output=True, text=True, env=two_nodes, timeout=30)
        assert done.returncode == 0, done.stderr

    scontrol_node("node1", "drain")  # parity_run (submitted first: --max-submit 1) starts on node2
    monitor_log = (tmp_path / "ck-run.out").open("w")
    monitor = subprocess.Popen([*CK, "run", str(exp), "--executor", "slurm", "--poll", str(POLL), "--max-submit", "1",
                                "--no-live"], env=env, cwd=tmp_path, stdout=monitor_log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_until(lambda: (exp / STATE_NAME).exists() and read_runs(exp).get("parity_run", {}).get("job_id"),
                       120, "parity_run's job")
            job_id = read_runs(exp)["parity_run"]["job_id"]
            wait_until(lambda: squeue_field(job_id, "%T %N", two_nodes) == "RUNNING node2", 120, "the job on node2")
        finally:
            scontrol_node("node1", "resume")
        wait_until(lambda: any(e["event"] == "train" and e["epoch"] == 1 for e in metrics()), 600, "epoch 1 to train",
                   step=0.1)
        assert (out_dir / "epoch_0").exists() and not (out_dir / "epoch_1").exists()
        before_loss = metrics()
        lost_at, lost_clock = time.monotonic(), time.strftime("%H:%M:%S")
        assert power_off("ck-node2")
        assert monitor.wait(timeout=900) == 0, (tmp_path / "ck-run.out").read_text()[-3000:]
        recovered_s = time.monotonic() - lost_at
    finally:
        if monitor.poll() is None:
            monitor.kill()
        monitor_log.close()
        back = subprocess.run([str(SLURM_LOCAL), "start", "--nodes", "2"], capture_output=True, text=True, timeout=300)
    assert back.returncode == 0, back.stderr

    runs = read_runs(exp)
    assert {name: run["state"] for name, run in runs.items()} == {"parity_run": "COMPLETED", "probabilistic_run": "COMPLETED"}
    final_job = runs["parity_run"]["job_id"]
    records = {j: subprocess.run(["sacct", "-c", "-n", "-P", "-j", j, "-o", "State,NodeList"], capture_output=True,
                                 text=True, env=two_nodes, timeout=30).stdout.split() for j in {job_id, final_job}}
    if requeue:  # the scheduler's record of the one job: NODE_FAIL on node2, then COMPLETED on node1
        assert final_job == job_id and not runs["parity_run"]["attempts"]  # requeued, not resubmitted
        assert records[job_id] == ["NODE_FAIL|node2", "COMPLETED|node1"], records
        [requeued] = log_entries(exp, "REQUEUED")
        assert requeued.fields["Job ID"] == job_id
        assert f"parity_run: job {job_id} requeued by SLURM" in (tmp_path / "ck-run.out").read_text()
        assert not [e for e in explog.read_log(exp, "run") if e.action.startswith(("JOB_", "RETRY", "SUBMIT_FAILED"))]
    else:  # ended NODE_FAIL; the retry policy gave the run one new job
        assert final_job != job_id and runs["parity_run"]["node_fail_retries"] == 1
        assert [a["state"] for a in runs["parity_run"]["attempts"]] == ["NODE_FAIL"]
        assert records == {job_id: ["NODE_FAIL|node2"], final_job: ["COMPLETED|node1"]}, records
        [retry] = log_entries(exp, "RETRY_NODE_FAIL")
        assert retry.fields["Job ID"] == job_id and "resumes from its last epoch checkpoint" in retry.fields["Explanation"]
        assert not log_entries(exp, "REQUEUED")
    assert len([e for e in log_entries(exp, "SUBMIT_JOB") if "parity_run" in e.description]) == (1 if requeue else 2)
    log = (out_dir / f"slurm-{final_job}.out").read_text()
    assert "epoch checkpoints found: resume" in log, log[-3000:]
    after = metrics()
    steps = [e["step"] for e in after if e["event"] == "train"]
    assert steps == sorted(set(steps)), "a step is in metrics.jsonl twice"
    assert [e for e in after if e["epoch"] == 0] == [e for e in before_loss if e["epoch"] == 0]
    assert after[-1]["event"] == "end" and after[-1]["steps"] == 60
    print(f"\nnode loss: job {job_id} lost at step {max(e['step'] for e in before_loss if e['event'] == 'train')}; "
          f"node2 powered off at {lost_clock}; `ck run` done {recovered_s:.0f} s later")
