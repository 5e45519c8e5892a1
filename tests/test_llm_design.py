"""`ck design --describe`: the real `anthropic` SDK against a loopback server speaking the Messages API.

No test needs the internet: ANTHROPIC_BASE_URL points the SDK at tests/anthropic_loopback.py,
which answers with scripted replies in the real wire format.
"""

from __future__ import annotations

import argparse
import io
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anthropic_loopback import AnthropicLoopback, error, message, text_block, tool_use  # noqa: E402

from cruijff_kit import explog  # noqa: E402
from cruijff_kit.design import build_plan, design_check  # noqa: E402
from cruijff_kit.errors import CkError  # noqa: E402
from cruijff_kit.experiment import Experiment  # noqa: E402
from cruijff_kit.llm_design import (  # noqa: E402
    TOOL_NAME,
    LlmOptions,
    ProposalInvalid,
    add_describe_arguments,
    design_from_description,
    plan_from_proposal,
    proposal_schema,
    run_describe,
)
from cruijff_kit.settings import load_settings  # noqa: E402
from sanity_checks.bit_sequences.check import BitSequenceArgs  # noqa: E402

REQUEST = "compare parity and Bernoulli p=0.3 at bit lengths 8 and 12"
PURPOSE = "Parity should be learned (loss to 0) and Bernoulli(0.3) should plateau at H(0.3), at 8 and 12 bits."
SECRET = "sk-ant-loopback-SECRET-3f9c2b7e"
FAST = LlmOptions(model="claude-sonnet-4-6", max_tokens=2048, timeout_s=5.0, max_retries=1, max_rounds=3)


def valid_proposal() -> dict:
    """The plan `ck design bit-sequences --bit-length 8 --p 0.3 --add-run ...` builds, as the model proposes it."""
    return {
        "purpose": PURPOSE,
        "runs": [
            {"name": "parity_run", "dataset": {"generator": {"bit_length": 8, "bit_parity": True, "p": 0.0}}},
            {"name": "probabilistic_run", "dataset": {"generator": {"bit_length": 8, "bit_parity": False, "p": 0.3}}},
            {"name": "parity_L12", "dataset": {"generator": {"bit_length": 12, "bit_parity": True, "p": 0.0}}},
            {"name": "bernoulli_p03_L12", "dataset": {"generator": {"bit_length": 12, "bit_parity": False, "p": 0.3}}},
        ],
    }


def plan_reply(proposal: dict, **kw):
    return message([tool_use(TOOL_NAME, proposal)], stop_reason="tool_use", **kw)


@pytest.fixture
def api(tmp_path, monkeypatch):
    """Isolated settings and scratch, a known secret key, and the SDK pointed at a loopback server."""
    monkeypatch.setenv("CK_CONFIG", str(tmp_path / "settings.yaml"))
    monkeypatch.setenv("CK_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.setenv("CK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    for var in ("ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE", "ANTHROPIC_CUSTOM_HEADERS", "ANTHROPIC_IDENTITY_TOKEN",
                "ANTHROPIC_IDENTITY_TOKEN_FILE", "ANTHROPIC_FEDERATION_RULE_ID", "ANTHROPIC_ORGANIZATION_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("ANTHROPIC_CONFIG_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no Anthropic profile on disk either
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    with AnthropicLoopback() as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        yield server


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def assert_key_never_written(root: Path, *texts: str) -> None:
    for path in files_under(root):
        assert SECRET.encode() not in path.read_bytes(), f"API key written to {path}"
    for text in texts:
        assert SECRET not in text


def assert_nothing_written(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    assert not scratch.exists() or not any(scratch.rglob("*")), list(scratch.rglob("*"))
    assert not list(tmp_path.rglob("*.log"))
    assert not list(tmp_path.rglob("experiment_summary.md"))


def actions(exp_dir: Path) -> list[str]:
    return [e.action for e in explog.read_log(exp_dir, "design")]


def test_valid_plan_is_written_like_the_flag_built_plan(api, tmp_path, capsys):
    api.script(plan_reply(valid_proposal(), model="claude-sonnet-4-5-20250929"))
    llm_dir = design_from_description(REQUEST, settings=load_settings(), name="compare", options=FAST, yes=True)
    llm_summary = (llm_dir / "experiment_summary.md").read_text()
    llm_log = explog.read_log(llm_dir, "design")
    llm_dir.rename(llm_dir.with_name("compare_llm"))

    flag_dir = design_check("bit_sequences", 
        "embedded", settings=load_settings(), name="compare",
        overrides={"bit_length": 8, "p": 0.3, "purpose": PURPOSE},
        extra_runs=[{"name": "parity_L12", "bit_parity": True, "bit_length": 12, "p": 0.0},
                    {"name": "bernoulli_p03_L12", "bit_parity": False, "bit_length": 12, "p": 0.3}],
    )
    assert flag_dir == llm_dir
    assert (flag_dir / "experiment_summary.md").read_text() == llm_summary
    assert Experiment.load(flag_dir) == Experiment.load(llm_dir.with_name("compare_llm"))
    # Same write path: the flag log's entries, after the LLM's own.
    assert [e.action for e in llm_log] == ["LLM_REQUEST", "LLM_VALIDATE", "LLM_DECISION"] + actions(flag_dir)
    assert llm_log[0].description == REQUEST
    assert "claude-sonnet-4-6" in llm_log[0].fields["Result"]
    assert llm_log[1].fields["Model"] == "claude-sonnet-4-5-20250929"
    assert "valid" in llm_log[1].description and "--yes" in llm_log[2].fields["Result"]

    # The request: the SDK's wire format, the key from the environment, the generated schema, the tool forced.
    (req,) = api.message_requests()
    assert SECRET in (req.headers.get("x-api-key", "") + req.headers.get("authorization", ""))
    body = req.body
    assert body["model"] == "claude-sonnet-4-6" and body["max_tokens"] == 2048
    assert body["tool_choice"] == {"type": "tool", "name": TOOL_NAME}
    assert body["tools"][0]["input_schema"] == proposal_schema()
    assert body["messages"] == [{"role": "user", "content": REQUEST}]
    assert "purpose" in capsys.readouterr().out
    assert_key_never_written(tmp_path, llm_summary)


def test_schema_is_generated_from_the_plan_model():
    schema, plan = proposal_schema(), Experiment.model_json_schema()
    assert set(schema["properties"]) - {"sweep"} == {"purpose", "runs"} <= set(plan["properties"])
    assert schema["required"] == ["purpose"]  # runs, or a sweep, or both
    assert set(schema["properties"]["sweep"]["properties"]["variables"]["properties"]) == set(CHECK_SWEEP)
    generator = schema["$defs"]["BitSequenceArgs"]
    assert generator["properties"] == BitSequenceArgs.model_json_schema()["properties"]
    assert set(generator["required"]) == {"bit_parity", "p"}
    run = schema["$defs"]["RunPlan"]
    assert set(run["properties"]) == set(plan["$defs"]["RunPlan"]["properties"]) - {"expected"}
    assert schema["$defs"]["Hyper"]["properties"] == plan["$defs"]["Hyper"]["properties"]
    assert "required" not in schema["$defs"]["Hyper"]
    assert "Expected" not in schema["$defs"]  # only referenced by the left-out `expected`


def test_seed_preset_proposal_equals_the_seed_plan(api):
    """Left-out fields come from the preset exactly as the flag path fills them (seed file names included)."""
    flag_plan = build_plan("bit_sequences", "seed", settings=load_settings(), name="seed_check")
    proposal = {"purpose": flag_plan.purpose, "runs": [
        {"name": "parity_run", "dataset": {"generator": {"bit_parity": True, "p": 0.0}}},
        {"name": "probabilistic_run", "dataset": {"generator": {"bit_parity": False, "p": 0.5}}},
    ]}
    assert plan_from_proposal(proposal, flag_plan, "seed") == flag_plan
    proposal["runs"][1]["hyper"] = {"epochs": 3}
    changed = plan_from_proposal(proposal, flag_plan, "seed")
    assert changed.runs[1].hyper == flag_plan.runs[1].hyper.model_copy(update={"epochs": 3})


def test_invalid_proposal_is_corrected_in_a_second_round(api, tmp_path):
    bad = valid_proposal()
    bad["runs"][1]["dataset"]["generator"]["p"] = 1.3
    bad["experiment_dir"] = "/tmp/elsewhere"
    first = tool_use(TOOL_NAME, bad)
    api.script(message([text_block("Here is the plan."), first]), plan_reply(valid_proposal()))

    exp_dir = design_from_description(REQUEST, settings=load_settings(), name="fixed", options=FAST, yes=True)

    second = api.message_requests()[1].body["messages"]
    assert second[0] == {"role": "user", "content": REQUEST}
    assert second[1]["role"] == "assistant"
    assert [b["type"] for b in second[1]["content"]] == ["text", "tool_use"]
    assert second[1]["content"][1]["id"] == first["id"] and second[1]["content"][1]["input"] == bad
    (result,) = second[2]["content"]
    assert result["type"] == "tool_result" and result["tool_use_id"] == first["id"] and result["is_error"] is True
    assert "runs[1].dataset.generator.p" in result["content"] and "1.3" in result["content"]
    assert "experiment_dir: set by cruijff_kit" in result["content"]

    log = explog.read_log(exp_dir, "design")
    validations = [e for e in log if e.action == "LLM_VALIDATE"]
    assert [("invalid" in e.description) for e in validations] == [True, False]
    assert "runs[1].dataset.generator.p" in validations[0].fields["Result"]
    assert Experiment.load(exp_dir).get_run("probabilistic_run").dataset.args().p == 0.3
    assert_key_never_written(tmp_path)


def test_rate_limit_then_success_is_retried(api, tmp_path):
    api.script(error(429, "rate_limit_error", "Number of requests has exceeded your rate limit", retry_after=0.01),
               plan_reply(valid_proposal()))
    exp_dir = design_from_description(REQUEST, settings=load_settings(), name="retried", options=FAST, yes=True)
    reqs = api.message_requests()
    assert [r.headers.get("x-stainless-retry-count") for r in reqs] == ["0", "1"]
    assert len(Experiment.load(exp_dir).runs) == 4
    assert_key_never_written(tmp_path)


def _never_valid():
    bad = valid_proposal()
    bad["runs"][0]["dataset"]["generator"]["val_size"] = 5000  # above N
    return [plan_reply(bad) for _ in range(FAST.max_rounds)]


FAILURES = {
    # name: (scripted replies, options change, expected words in the error, requests the SDK makes)
    "500s": ([error(500, text="Internal server error", retry_after=0.01)] * 2, {}, "server error", 2),
    "overloaded": ([error(529, "overloaded_error", "Overloaded", retry_after=0.01)] * 2, {}, "HTTP 529", 2),
    "429s": ([error(429, retry_after=0.01)] * 2, {}, "rate-limited", 2),
    "timeout": ([plan_reply(valid_proposal(), delay_s=3.0)], {"timeout_s": 0.3, "max_retries": 0},
                "did not answer in time", 1),
    "bad key": ([error(401, text="invalid x-api-key")], {}, "rejected the key", 1),
    "refusal": ([message([], stop_reason="refusal")], {}, "declined", 1),
    "no tool_use": ([message([text_block("I would rather not.")], stop_reason="end_turn")], {}, "without a plan", 1),
    "cut off": ([message([tool_use(TOOL_NAME, {"purpose": "x"})], stop_reason="max_tokens")], {}, "cut off", 1),
    "never valid": (_never_valid(), {}, "still invalid after 3 round(s)", 3),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_failures_are_one_clear_error_and_write_nothing(api, tmp_path, case):
    replies, change, words, n_requests = FAILURES[case]
    api.script(*replies)
    options = LlmOptions(**{**FAST.__dict__, **change})
    with pytest.raises(CkError) as info:
        design_from_description(REQUEST, settings=load_settings(), name="failed", options=options, yes=True)
    text = str(info.value)
    assert words in text and "ck design bit-sequences" in text and "\n" not in text
    assert len(api.message_requests()) == n_requests
    assert_nothing_written(tmp_path)
    assert_key_never_written(tmp_path, text)


def test_no_key_fails_before_any_request(api, tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(CkError, match="ANTHROPIC_API_KEY.*ck design bit-sequences"):
        design_from_description(REQUEST, settings=load_settings(), options=FAST, yes=True)
    assert api.requests == []
    assert_nothing_written(tmp_path)


def test_no_network_is_a_clear_error(api, tmp_path, monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{port}")
    options = LlmOptions(**{**FAST.__dict__, "max_retries": 0})
    with pytest.raises(CkError, match="cannot reach the Anthropic API.*ck design bit-sequences"):
        design_from_description(REQUEST, settings=load_settings(), options=options, yes=True)
    assert_nothing_written(tmp_path)


def test_declined_confirmation_writes_nothing_and_yes_at_the_prompt_writes(api, tmp_path, capsys):
    api.script(plan_reply(valid_proposal()), plan_reply(valid_proposal()))
    prompts = []
    with pytest.raises(CkError, match="not written"):
        design_from_description(REQUEST, settings=load_settings(), name="asked", options=FAST,
                                ask=lambda prompt: prompts.append(prompt) or "n")
    assert_nothing_written(tmp_path)
    out = capsys.readouterr().out
    assert "parity_L12" in out and "bernoulli_p03_L12" in out  # the runs table was shown before asking
    assert len(prompts) == 1 and "[y/N]" in prompts[0]

    exp_dir = design_from_description(REQUEST, settings=load_settings(), name="asked", options=FAST,
                                      ask=lambda prompt: "y")
    decision = [e for e in explog.read_log(exp_dir, "design") if e.action == "LLM_DECISION"]
    assert "confirmed at the prompt" in decision[0].fields["Result"]


def _describe_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ck design")
    add_describe_arguments(parser)
    return parser.parse_args(list(argv))


def test_run_describe_reads_stdin_and_logs_the_command(api, tmp_path, monkeypatch, capsys):
    api.script(plan_reply(valid_proposal()))
    monkeypatch.setattr(sys, "stdin", io.StringIO(REQUEST + "\n"))
    assert run_describe(_describe_args("--describe", "-", "--yes", "--name", "from_stdin")) == 0
    exp_dir = tmp_path / "scratch" / "ck-sanity-checks" / "from_stdin"
    log = explog.read_log(exp_dir, "design")
    assert log[0].description == REQUEST
    assert log[0].fields["Command"].startswith("ck design --describe 'compare parity")
    assert "--yes" in log[0].fields["Command"]
    assert str(exp_dir / "experiment_summary.md") in capsys.readouterr().out
    assert_key_never_written(tmp_path)


def test_run_describe_without_yes_off_a_terminal_spends_nothing(api, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(REQUEST))
    with pytest.raises(CkError, match="--yes"):
        run_describe(_describe_args("--describe", "-"))
    assert api.requests == []
    assert_nothing_written(tmp_path)


def test_describe_options_do_not_shadow_bit_sequences_defaults():
    args = _describe_args("--describe", "x")
    assert not hasattr(args, "preset") and not hasattr(args, "scratch") and not hasattr(args, "yes")


def test_ck_design_describe_end_to_end(api, tmp_path, capsys):
    from cruijff_kit.cli import main

    from cruijff_kit.commands import design as design_command

    parser = argparse.ArgumentParser()
    design_command.configure(parser)
    if not any("--describe" in a.option_strings for a in parser._actions):
        pytest.skip("commands/design.py does not wire --describe yet")
    api.script(plan_reply(valid_proposal()))
    assert main(["design", "--describe", REQUEST, "--yes", "--name", "via_cli"]) == 0
    assert len(Experiment.load(tmp_path / "scratch" / "ck-sanity-checks" / "via_cli").runs) == 4
    assert "next: ck scaffold" in capsys.readouterr().out


def test_llm_options_from_settings(tmp_path):
    settings = load_settings(env={}, path=tmp_path / "absent.yaml")
    assert LlmOptions.from_settings(settings) == LlmOptions()  # settings.py's defaults
    custom = argparse.Namespace(llm_model="claude-opus-4-1", llm_max_tokens="8192", llm_timeout="30",
                                llm_max_retries=0, llm_max_rounds=5)
    assert LlmOptions.from_settings(custom) == LlmOptions("claude-opus-4-1", 8192, 30.0, 0, 5)
    with pytest.raises(CkError, match="llm_max_rounds"):
        LlmOptions.from_settings(argparse.Namespace(llm_max_rounds=0))


CHECK_SWEEP = ("bit_length", "N", "val_size", "p", "noise", "data_seed")


def test_a_sweep_proposal_is_the_flag_built_sweep(api, tmp_path):
    """`--describe` carries a grid as variables with lists (a few tokens), expanded like the flags expand it."""
    api.script(plan_reply({"purpose": PURPOSE, "sweep": {"variables": {"bit_length": [6, 8], "p": [0.1, 0.3]},
                                                          "seeds": 2}}))
    llm_dir = design_from_description("parity and Bernoulli at bit lengths 6 and 8, p 0.1 and 0.3, two seeds",
                                      settings=load_settings(), name="grid", options=FAST, yes=True)
    flag = build_plan("bit_sequences", "embedded", settings=load_settings(), name="grid",
                      overrides={"bit_length": [6, 8], "p": [0.1, 0.3], "seeds": 2, "purpose": PURPOSE})
    assert Experiment.load(llm_dir) == flag
    assert len(flag.runs) == 2 * 2 + 2 * 2 * 2 and "parity_L8_s2" in [r.name for r in flag.runs]


def test_a_bad_sweep_is_sent_back_with_its_problem(api, tmp_path):
    skeleton = build_plan("bit_sequences", "embedded", settings=load_settings(), name="x")
    with pytest.raises(ProposalInvalid) as err:
        plan_from_proposal({"purpose": "p", "sweep": {"variables": {"epochs": [1, 2]}}}, skeleton, "embedded")
    assert "sweep.variables.epochs: not a sweep variable" in str(err.value)
