"""The retry policy (cruijff_kit/retry.py): one rule per kind of ending, bounded, per experiment."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cruijff_kit.cli import main
from cruijff_kit.errors import CkError
from cruijff_kit.executors import TERMINAL_STATES
from cruijff_kit.retry import HALF_BATCH, MACHINE_FAILURES, NO_RETRY, POLICY_FILE, RESUBMIT, RetryPolicy

counts = st.integers(min_value=0, max_value=5)


@given(oom=counts, node_fail=counts, done=counts, state=st.sampled_from(sorted(TERMINAL_STATES)))
def test_each_ending_has_one_rule_and_retries_are_bounded(oom, node_fail, done, state):
    policy = RetryPolicy(oom=oom, node_fail=node_fail)
    decision = policy.decide(state, oom_done=done, node_fail_done=done)
    if state == "OOM":
        assert decision.action == (HALF_BATCH if done < oom else NO_RETRY)
    elif state in MACHINE_FAILURES:
        assert decision.action == (RESUBMIT if done < node_fail else NO_RETRY)
    else:  # exit != 0, TIMEOUT, CANCELLED, COMPLETED, ...: never
        assert decision.action == NO_RETRY
    assert state in decision.why or (state == "OOM" and "memory" in decision.why)


def test_defaults_retry_a_node_failure_once_and_an_oom_never():
    policy = RetryPolicy()
    assert policy.decide("NODE_FAIL").action == RESUBMIT
    assert policy.decide("NODE_FAIL", node_fail_done=1).action == NO_RETRY
    assert policy.decide("OOM").action == NO_RETRY
    assert policy.decide("FAILED").action == NO_RETRY


def test_the_experiment_file_sets_the_policy_and_flags_override_it(tmp_path):
    (tmp_path / POLICY_FILE).write_text("oom: 2\nnode_fail: 0\n")
    assert RetryPolicy.load(tmp_path) == RetryPolicy(oom=2, node_fail=0)
    assert RetryPolicy.load(tmp_path, oom=1, node_fail=None) == RetryPolicy(oom=1, node_fail=0)


@pytest.mark.parametrize("text", ["oom: 1\npreempt: 2\n", "oom: -1\n", "oom: yes\n", "- 1\n", "oom: [\n"])
def test_a_bad_policy_file_is_a_one_line_error(tmp_path, text):
    (tmp_path / POLICY_FILE).write_text(text)
    with pytest.raises(CkError):
        RetryPolicy.load(tmp_path)


def test_ck_run_names_the_bad_key(tmp_path, capsys):
    from test_executors import make_run

    exp = tmp_path / "exp"
    make_run(exp, "a", "true")
    (exp / POLICY_FILE).write_text("oom: 1\nretries: 3\n")
    assert main(["run", str(exp), "--executor", "local", "--no-live"]) == 2
    err = capsys.readouterr().err
    assert "retries" in err and "\n" not in err.strip() and "Traceback" not in err
    assert not (exp / ".ck-run-state.json").exists()
