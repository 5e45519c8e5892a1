"""The retry policy, in one place: which ended jobs `ck run` gives a new job, and how.

    policy = RetryPolicy.load(exp_dir, oom=args.retry_oom)   # <exp_dir>/retry_policy.yaml, then flags
    decision = policy.decide(state, retries_done)              # Decision(action, why)

- OOM (FAILED with a CUDA out-of-memory line): resubmit at half the batch size, at most `oom` times.
- NODE_FAIL, PREEMPTED, BOOT_FAIL (the machine, not the run, failed): resubmit unchanged, at most
  `node_fail` times; the job resumes from its last epoch checkpoint (finetune.slurm decides at start).
- Everything else that ended badly (FAILED with exit != 0, TIMEOUT, CANCELLED, ...): no retry; the
  user fixes the cause and asks with `ck run EXP_DIR --rerun RUN`.

Per experiment: `<exp_dir>/retry_policy.yaml` with the keys `oom` and `node_fail` (whole numbers
>= 0); `ck run --retry-oom N` / `--retry-node-fail N` override the file for that command.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from cruijff_kit.errors import CkError

POLICY_FILE = "retry_policy.yaml"
MACHINE_FAILURES = frozenset({"NODE_FAIL", "PREEMPTED", "BOOT_FAIL"})
HALF_BATCH = "half_batch"
RESUBMIT = "resubmit"
NO_RETRY = "none"


@dataclass(frozen=True)
class Decision:
    action: str  # HALF_BATCH, RESUBMIT or NO_RETRY
    kind: str    # the counter it uses: "oom" or "node_fail" ("" for NO_RETRY)
    why: str


@dataclass(frozen=True)
class RetryPolicy:
    oom: int = 0        # resubmissions at half batch size after OOM
    node_fail: int = 1  # resubmissions after NODE_FAIL / PREEMPTED / BOOT_FAIL

    @classmethod
    def load(cls, exp_dir: Path, **overrides: int | None) -> "RetryPolicy":
        """The experiment's retry_policy.yaml (if any), then the non-None overrides (command flags)."""
        values: dict[str, int] = {}
        path = Path(exp_dir) / POLICY_FILE
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise CkError(POLICY_FILE, str(path), f"is not YAML ({exc.__class__.__name__})",
                              "write e.g. `oom: 1` and `node_fail: 2`, one per line") from None
            if not isinstance(data, dict):
                raise CkError(POLICY_FILE, str(path), "is not a mapping", "write e.g. `oom: 1` and `node_fail: 2`")
            values.update(data)
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        for key, value in values.items():
            if key not in known:
                raise CkError(f"{POLICY_FILE} key", key, "unknown", f"use {' or '.join(sorted(known))}")
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise CkError(key, value, "must be a whole number >= 0", f"e.g. {key}: 1")
        return cls(**values)

    def decide(self, state: str, oom_done: int = 0, node_fail_done: int = 0) -> Decision:
        """What to do about a job that ended in `state`, given the retries this run already had."""
        if state == "OOM":
            if oom_done < self.oom:
                return Decision(HALF_BATCH, "oom", f"out of GPU memory: retry {oom_done + 1} of {self.oom} "
                                                   "at half the batch size")
            return Decision(NO_RETRY, "", f"out of GPU memory; {oom_done} of {self.oom} OOM retries used "
                                          "(--retry-oom N or `oom:` in retry_policy.yaml allows more)")
        if state in MACHINE_FAILURES:
            if node_fail_done < self.node_fail:
                return Decision(RESUBMIT, "node_fail", f"{state}: the machine failed, not the run: resubmit "
                                f"{node_fail_done + 1} of {self.node_fail}; it resumes from its last epoch checkpoint")
            return Decision(NO_RETRY, "", f"{state}; {node_fail_done} of {self.node_fail} node-failure retries used")
        return Decision(NO_RETRY, "", f"{state} is not retried: fix the cause, then `ck run EXP_DIR --rerun RUN`")

    def describe(self) -> str:
        return f"oom={self.oom} (half batch size), node_fail={self.node_fail} (NODE_FAIL/PREEMPTED/BOOT_FAIL)"
