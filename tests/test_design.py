"""`ck design` and `ck log`: the seed's layout, verification logs, overrides, refusals."""

from __future__ import annotations

import datetime as dt
import math
import os

import pytest

from cruijff_kit import explog
from cruijff_kit.cli import main
from cruijff_kit.design import (
    build_plan,
    design_check,
    write_experiment,
)
from cruijff_kit.errors import CkError
from cruijff_kit.experiment import SUMMARY_NAME, Experiment
from cruijff_kit.markdown_sections import get_section, set_section
from cruijff_kit.settings import load_settings
from sanity_checks.bit_sequences import presets
from sanity_checks.bit_sequences.check import CHECK, BitSequenceArgs, expected_dedup_loss

parse_add_run = CHECK.parse_add_run


@pytest.fixture(autouse=True)
def scratch(tmp_path, monkeypatch):
    """A temporary scratch, data dir and settings file: the user's real config is never touched."""
    for name in list(os.environ):
        if name.startswith("CK_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CK_CONFIG", str(tmp_path / "settings.yaml"))
    monkeypatch.setenv("CK_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.setenv("CK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "scratch"


def test_seed_preset_writes_the_seed_layout(scratch, tmp_path, capsys):
    assert main(["design", "bit-sequences", "--preset", "seed", "--yes"]) == 0
    today = dt.date.today().isoformat()
    name = f"sanity_check_bit_sequences_{today}"
    exp_dir = scratch / "ck-sanity-checks" / name
    assert sorted(p.name for p in exp_dir.iterdir() if not p.name.startswith(".")) == [
        "design-experiment.log", SUMMARY_NAME]
    out = capsys.readouterr().out
    assert str(exp_dir) in out and "parity_run" in out and "probabilistic_run" in out

    exp = Experiment.load(exp_dir)
    assert exp.name == name and exp.kind == "sanity_check" and exp.date == today
    assert exp.wandb_project == f"bit_sequences_{today}"
    assert exp.output_root == str(scratch / "ck-outputs" / name)
    assert exp.run_output_dir("parity_run") == scratch / "ck-outputs" / name / "ck-out-parity_run"
    assert exp.models_dir == str(scratch / "models") and exp.data_dir == str(tmp_path / "data")
    assert [r.name for r in exp.runs] == list(presets.SEED["runs"])
    for run in exp.runs:
        assert run.model == presets.SEED["model"]
        assert run.dataset.generator == BitSequenceArgs(**presets.SEED["runs"][run.name]).model_dump()
        assert run.hyper.model_dump(include=set(presets.SEED["hyper"])) == presets.SEED["hyper"]
        assert run.hyper.lora_alpha == 2 * presets.SEED["hyper"]["lora_rank"]
        assert run.compute.gpus == presets.SEED["compute"]["gpus"]
        assert run.compute.time == presets.SEED["compute"]["time"]
    # the seed README's data file names
    assert exp.get_run("parity_run").dataset.dataset_path(exp) == tmp_path / "data" / "parity.json"
    assert exp.get_run("probabilistic_run").dataset.dataset_path(exp) == tmp_path / "data" / "prob_p05.json"
    assert exp.get_run("probabilistic_run").expected.floor_nats == pytest.approx(math.log(2), abs=1e-6)

    entries = explog.parse_log((exp_dir / "design-experiment.log").read_text())
    actions = [e.action for e in entries]
    assert actions == ["DESIGN_PLAN", "VERIFY_MODEL", "VERIFY_DATASET", "VERIFY_DATASET", "VERIFY_DISK",
                       "CREATE_SUMMARY"]
    model_entry = entries[1]
    assert "MISSING" in model_entry.fields["Result"]  # no Llama in a temp scratch: a warning, not a failure
    assert "will be generated" in entries[2].fields["Result"]
    assert "--preset seed" in entries[0].fields["Command"]
    assert not (tmp_path / "settings.yaml").exists()
    assert not (tmp_path / "data").exists()  # design plans data; scaffold generates it


def test_refuses_to_overwrite_unless_forced_and_keeps_later_sections(scratch, capsys):
    assert main(["design", "bit-sequences", "--name", "again", "--yes"]) == 0
    summary = scratch / "ck-sanity-checks" / "again" / SUMMARY_NAME
    set_section(summary, "Jobs", "| parity_run | 12 | RUNNING |")
    set_section(summary, "Results", "INCONCLUSIVE so far")
    before = summary.read_text()
    assert main(["design", "bit-sequences", "--name", "again", "--epochs", "3", "--yes"]) == 2
    assert "--force" in capsys.readouterr().err
    assert summary.read_text() == before
    assert main(["design", "bit-sequences", "--name", "again", "--epochs", "3", "--yes", "--force"]) == 0
    text = summary.read_text()
    assert get_section(text, "Jobs") == "| parity_run | 12 | RUNNING |"
    assert get_section(text, "Results") == "INCONCLUSIVE so far"
    assert all(r.hyper.epochs == 3 for r in Experiment.load(summary.parent).runs)
    log = explog.read_log(summary.parent, "design")
    assert [e.action for e in log].count("CREATE_SUMMARY") == 2
    assert "replaced" in log[-1].fields["Result"]


def test_overrides_and_added_runs(scratch):
    exp_dir = design_check("bit_sequences", 
        "embedded", name="variants",
        overrides={"bit_length": 12, "p": 0.3, "epochs": 2, "lr": 0.001, "time": "00:20:00"},
        extra_runs=[parse_add_run("noisy_parity:parity:12:0.1"), parse_add_run("biased:bernoulli:10:0.9:2000:100")],
        command_line="ck design bit-sequences ...",
    )
    assert exp_dir == scratch / "ck-sanity-checks" / "variants"
    exp = Experiment.load(exp_dir)
    runs = {r.name: r for r in exp.runs}
    assert list(runs) == ["parity_run", "probabilistic_run", "noisy_parity", "biased"]
    assert runs["parity_run"].dataset.args().p == 0.0  # --p changes the Bernoulli runs only
    assert runs["probabilistic_run"].dataset.args().p == 0.3
    assert all(r.dataset.args().bit_length == 12 for r in exp.runs[:3])
    assert runs["biased"].dataset.args().model_dump() == {
        "bit_length": 10, "N": 2000, "val_size": 100, "bit_parity": False, "p": 0.9, "seed": 42}
    assert runs["noisy_parity"].expected.target_accuracy == pytest.approx(0.9)
    assert runs["biased"].expected.target_accuracy == pytest.approx(0.9)
    assert all(r.hyper.epochs == 2 and r.hyper.lr == 0.001 and r.compute.time == "00:20:00" for r in exp.runs)
    assert len({r.dataset.label for r in exp.runs}) == 4  # distinct data never shares a file
    variables = get_section((exp_dir / SUMMARY_NAME).read_text(), "Variables and controls")
    assert "dataset.generator.p" in variables


def test_cli_flags_reach_the_plan(scratch):
    assert main(["design", "bit-sequences", "--name", "flags", "--bit-length", "10", "--noise", "0.05",
                 "--train-on-input", "false", "--add-run", "extra:bernoulli:10:0.2", "--yes"]) == 0
    exp = Experiment.load(scratch / "ck-sanity-checks" / "flags")
    assert exp.get_run("parity_run").dataset.args().p == 0.05
    assert exp.get_run("extra").dataset.args().p == 0.2
    assert not any(r.hyper.train_on_input for r in exp.runs)
    command = explog.read_log(scratch / "ck-sanity-checks" / "flags", "design")[0].fields["Command"]
    assert "--noise 0.05" in command and "--add-run extra:bernoulli:10:0.2" in command


@pytest.mark.parametrize("spec", ["x:parity:8", "x:coin:8:0.5", "x:parity:eight:0.5", "x:parity:8:0.1:10:20:30"])
def test_bad_add_run_spec(spec):
    with pytest.raises(CkError, match="NAME:parity|bernoulli"):
        parse_add_run(spec)


def test_bad_design_input_writes_nothing(scratch, capsys):
    with pytest.raises(CkError, match="did you mean epochs"):
        design_check("bit_sequences", "embedded", name="typo", overrides={"epoch": 3})
    with pytest.raises(CkError, match="hyper: batch_size"):
        design_check("bit_sequences", "embedded", name="zero", overrides={"batch_size": 0})
    # 2^3 = 8 strings cannot give 64 validation rows and leave training data
    assert main(["design", "bit-sequences", "--name", "tiny", "--bit-length", "3", "--yes"]) == 2
    assert "raise bit_length or lower val_size" in capsys.readouterr().err
    assert main(["design", "bit-sequences", "--name", "m", "--model", "no-such-model", "--yes"]) == 2
    assert not (scratch / "ck-sanity-checks").exists()
    with pytest.raises(CkError, match="unknown preset"):
        design_check("bit_sequences", "huge")


def test_dedup_estimate_and_warning(scratch, capsys):
    args = BitSequenceArgs(bit_length=5, N=3000, val_size=64, bit_parity=True, p=0.0)
    assert expected_dedup_loss(args) == pytest.approx(1 - (31 / 32) ** 64)
    exp_dir = design_check("bit_sequences", "embedded", name="short", overrides={"bit_length": 5, "N": 3000, "val_size": 64})
    assert "WARNING" in capsys.readouterr().err
    dataset_entries = [e for e in explog.read_log(exp_dir, "design") if e.action == "VERIFY_DATASET"]
    assert all("WARNING" in e.fields["Explanation"] and "87%" in e.fields["Explanation"] for e in dataset_entries)


def test_existing_dataset_with_matching_provenance_is_reused(scratch, tmp_path):
    from sanity_checks.bit_sequences.generator import write_dataset

    settings = load_settings()
    plan = build_plan("bit_sequences", "embedded", settings=settings, name="reuse",
                                    overrides={"N": 300, "val_size": 20})
    run = plan.get_run("parity_run")
    write_dataset(**run.dataset.args().model_dump(), output=run.dataset.dataset_path(plan).name,
                  output_dir=tmp_path / "data")
    exp_dir = write_experiment(plan, "test")
    results = {e.description: e.fields["Result"] for e in explog.read_log(exp_dir, "design")
               if e.action == "VERIFY_DATASET"}
    assert "generated from these arguments" in results["dataset for parity_run"]
    assert "will be generated" in results["dataset for probabilistic_run"]


def test_write_experiment_for_any_designer(scratch, tmp_path):
    settings = load_settings()
    plan = build_plan("bit_sequences", "embedded", settings=settings, name="llm_made")
    data = plan.model_dump(mode="json") | {
        "kind": "experiment", "experiment_dir": str(scratch / "ck-experiments" / "llm_made")}
    exp = Experiment.from_plan_dict(data)
    with pytest.raises(CkError, match="not written"):
        write_experiment(exp, "llm designer", confirm=lambda e, checks: False)
    assert not (scratch / "ck-experiments" / "llm_made").exists()
    seen = []
    exp_dir = write_experiment(exp, "llm designer", confirm=lambda e, checks: seen.extend(checks) or True)
    assert {c.action for c in seen} == {"VERIFY_MODEL", "VERIFY_DATASET", "VERIFY_DISK"}
    assert Experiment.load(exp_dir) == exp
    model_check = next(e for e in explog.read_log(exp_dir, "design") if e.action == "VERIFY_MODEL")
    assert "embedded model" in model_check.fields["Result"]


def test_ck_log(scratch, capsys):
    exp_dir = design_check("bit_sequences", "embedded", name="logged")
    assert main(["log", str(exp_dir), "CHOOSE_NOISE", "p = 0.1 next to 0.5", "--result", "floors 0.325, 0.693",
                 "--explanation", "user asked"]) == 0
    assert main(["log", "logged", "SCAFFOLD_NOTE", "by name", "--log", "scaffold"]) == 0
    entry = explog.read_log(exp_dir, "design")[-1]
    assert (entry.action, entry.description) == ("CHOOSE_NOISE", "p = 0.1 next to 0.5")
    assert entry.fields == {"Command": "-", "Result": "floors 0.325, 0.693", "Explanation": "user asked"}
    assert explog.read_log(exp_dir, "scaffold")[0].action == "SCAFFOLD_NOTE"
    assert main(["log", str(exp_dir), "lower-case", "x"]) == 2
    assert main(["log", str(scratch / "missing"), "OK_ACTION", "x"]) == 2
    assert "UPPER_SNAKE" in capsys.readouterr().err


def test_design_without_target_explains(capsys):
    assert main(["design"]) == 2
    assert "bit-sequences" in capsys.readouterr().err


def test_confirmation_only_on_a_terminal_and_without_yes(scratch, monkeypatch, capsys):
    answers = []
    monkeypatch.setattr("builtins.input", lambda prompt: answers.pop(0))
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    answers.append("n")
    with pytest.raises(CkError, match="not written"):
        design_check("bit_sequences", "embedded", name="asked", yes=False, interactive=True)
    assert not (scratch / "ck-sanity-checks" / "asked").exists()
    assert "parity_run" in capsys.readouterr().out  # the plan was shown before the question
    answers.append("")
    assert design_check("bit_sequences", "embedded", name="asked", yes=False, interactive=True).is_dir()
    design_check("bit_sequences", "embedded", name="not_asked", yes=True, interactive=True)  # --yes: input() not called
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    design_check("bit_sequences", "embedded", name="no_tty", yes=False, interactive=True)
    assert answers == []
