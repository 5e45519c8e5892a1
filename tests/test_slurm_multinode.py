"""The multi-node local SLURM (`scripts/slurm-local start --nodes 2`): one slurmd per network
namespace on a private bridge, a real cross-node gloo all_reduce through srun + torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SLURM_LOCAL = Path(__file__).resolve().parent.parent / "scripts" / "slurm-local"
MULTI_CONF = Path(os.environ.get("CK_SLURM_MULTI_DIR", "/var/lib/ck-slurm-multi")) / "slurm.conf"

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def two_nodes():
    proc = subprocess.run([str(SLURM_LOCAL), "start", "--nodes", "2"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        reason = f"slurm-local start --nodes 2 failed: {proc.stderr.strip()[-800:]}"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return {**os.environ, "SLURM_CONF": str(MULTI_CONF)}


TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}


def wait_for_job(job_id: str, env: dict, limit: float = 300) -> str:
    """The job's terminal state, from squeue (which keeps ended jobs for MinJobAge) or else `sacct -c`."""
    deadline = time.monotonic() + limit
    state = "UNKNOWN"
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                             env=env).stdout.split()
        acct = subprocess.run(["sacct", "-c", "-n", "-X", "-j", job_id, "-o", "State"], capture_output=True, text=True,
                              env=env).stdout.split()
        state = (out or acct or ["UNKNOWN"])[-1]
        if state in TERMINAL:
            return state
        time.sleep(0.5)
    return state


def test_status_shows_each_node(two_nodes):
    out = subprocess.run([str(SLURM_LOCAL), "status", "--nodes", "2"], capture_output=True, text=True, timeout=60).stdout
    assert "slurmd-node1: running" in out and "slurmd-node2: running" in out
    assert f"SLURM_CONF={MULTI_CONF}" in out


def test_srun_reaches_both_nodes(two_nodes):
    out = subprocess.run(["srun", "-N2", "hostname"], capture_output=True, text=True, env=two_nodes, timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split()) == ["node1", "node2"]


def test_gloo_all_reduce_across_two_nodes(two_nodes, tmp_path):
    script = tmp_path / "all_reduce.py"
    script.write_text(
        "import socket, torch, torch.distributed as dist\n"
        "dist.init_process_group('gloo')\n"
        "t = torch.tensor([dist.get_rank() + 1.0])\n"
        "dist.all_reduce(t)\n"
        "print('RESULT', socket.gethostname(), dist.get_rank(), t.item(), flush=True)\n")
    torchrun = Path(sys.executable).with_name("torchrun")
    job = tmp_path / "job.sbatch"
    job.write_text(
        "#!/bin/bash\n#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=1\n"
        f"#SBATCH --output={tmp_path}/slurm-%j.out\n"
        'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)\n'
        f"srun {torchrun} --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d --rdzv_id $SLURM_JOB_ID "
        f"--rdzv_endpoint $head:$((20000 + SLURM_JOB_ID % 20000)) {script}\n")
    sub = subprocess.run(["sbatch", "--parsable", str(job)], capture_output=True, text=True, env=two_nodes, timeout=60)
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip().split(";")[0]
    assert wait_for_job(job_id, two_nodes) == "COMPLETED"
    results = [line.split()[1:] for line in (tmp_path / f"slurm-{job_id}.out").read_text().splitlines()
               if line.startswith("RESULT")]
    assert sorted(host for host, _, _ in results) == ["node1", "node2"]  # one rank on each node
    assert sorted(rank for _, rank, _ in results) == ["0", "1"]
    assert [total for _, _, total in results] == ["3.0", "3.0"]  # 1 + 2 on both ranks
