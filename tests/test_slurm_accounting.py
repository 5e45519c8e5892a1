"""The local SLURM with real accounting (`scripts/slurm-local start --accounting`): MariaDB +
slurmdbd, plain `sacct` from the database, a QOS that caps submissions like a production cluster.

It runs as a second instance (its own state dir and ports) beside the accounting-free one that
the other SLURM tests use, so neither restarts the other."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

SLURM_LOCAL = Path(__file__).resolve().parent.parent / "scripts" / "slurm-local"
ACCT_DIR = Path("/var/lib/ck-slurm-acct")

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def accounting_env():
    env = {**os.environ, "CK_SLURM_DIR": str(ACCT_DIR), "CK_SLURM_PORT": "6837", "CK_SLURM_LINK_CONF": "0",
           "CK_SLURM_QOS_CAP": "2"}
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
