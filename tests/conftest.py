"""Fixtures for every test.

- Settings isolation: no test reads the developer's settings file or CK_* variables; each test
  gets an empty settings file path of its own (tests that want settings set them explicitly).
- The real single-node SLURM (scripts/slurm-local) for tests marked `slurm`, with real accounting
  (`start --accounting`: slurmdbd + MariaDB, plain sacct) like a production cluster. The cheaper
  accounting-free mode: CK_TEST_SLURM_ACCOUNTING=0. Another instance than the default one:
  CK_SLURM_DIR / CK_SLURM_PORT / CK_SLURM_LINK_CONF=0 (read once here, before each test's settings
  isolation removes CK_* variables; its clients get SLURM_CONF).

If it cannot start (not root, no apt mirror, daemons fail): with $CI set the test fails loudly,
otherwise it is skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SLURM_LOCAL = Path(__file__).resolve().parent.parent / "scripts" / "slurm-local"
SLURM_ACCOUNTING = os.environ.get("CK_TEST_SLURM_ACCOUNTING", "1") != "0"
SLURM_INSTANCE_ENV = {k: v for k, v in os.environ.items() if k.startswith("CK_SLURM_")}
SLURM_DIR = Path(SLURM_INSTANCE_ENV.get("CK_SLURM_DIR", "/var/lib/ck-slurm"))


def slurm_local(command: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`scripts/slurm-local start|status|stop` on the test session's instance, in its mode."""
    argv = [str(SLURM_LOCAL), command] + (["--accounting"] if command == "start" and SLURM_ACCOUNTING else [])
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, **SLURM_INSTANCE_ENV})


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path_factory, monkeypatch):
    for key in [k for k in os.environ if k.startswith("CK_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CK_CONFIG", str(tmp_path_factory.mktemp("settings") / "settings.yaml"))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The embedded tiny model (seed 0), built once per session (per xdist worker). Read-only: a test that
    plants a fault copies it first."""
    from cruijff_kit.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models"), seed=0)


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """Starts (idempotently) the local SLURM once per session; returns the node name."""
    if os.geteuid() != 0:
        reason = "scripts/slurm-local needs root to install and start slurmctld/slurmd/munged"
    else:
        try:
            proc = slurm_local("start")
            reason = None if proc.returncode == 0 else \
                f"scripts/slurm-local start failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = f"scripts/slurm-local start failed: {exc}"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI requires the local SLURM: {reason}", pytrace=False)
        pytest.skip(reason)
    if "CK_SLURM_DIR" in SLURM_INSTANCE_ENV:
        os.environ["SLURM_CONF"] = str(SLURM_DIR / "slurm.conf")  # this session's sbatch/squeue/sacct
    return subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()


@pytest.fixture(autouse=True)
def _slurm_for_marked_tests(request):
    if request.node.get_closest_marker("slurm") is not None:
        request.getfixturevalue("slurm_cluster")
