"""Fixtures for every test.

- Settings isolation: no test reads the developer's settings file or CK_* variables; each test
  gets an empty settings file path of its own (tests that want settings set them explicitly).
- The real single-node SLURM (scripts/slurm-local) for tests marked `slurm`.

If it cannot start (not root, no apt mirror, daemons fail): with $CI set the test fails loudly,
otherwise it is skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SLURM_LOCAL = Path(__file__).resolve().parent.parent / "scripts" / "slurm-local"


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path_factory, monkeypatch):
    for key in [k for k in os.environ if k.startswith("CK_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CK_CONFIG", str(tmp_path_factory.mktemp("settings") / "settings.yaml"))


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """Starts (idempotently) the local SLURM once per session; returns the node name."""
    if os.geteuid() != 0:
        reason = "scripts/slurm-local needs root to install and start slurmctld/slurmd/munged"
    else:
        try:
            proc = subprocess.run([str(SLURM_LOCAL), "start"], capture_output=True, text=True, timeout=600)
            reason = None if proc.returncode == 0 else \
                f"scripts/slurm-local start failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = f"scripts/slurm-local start failed: {exc}"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI requires the local SLURM: {reason}", pytrace=False)
        pytest.skip(reason)
    return subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()


@pytest.fixture(autouse=True)
def _slurm_for_marked_tests(request):
    if request.node.get_closest_marker("slurm") is not None:
        request.getfixturevalue("slurm_cluster")
