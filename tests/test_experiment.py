"""The plan model and experiment_summary.md: validation, round trip, hand edits, kept sections."""

from __future__ import annotations

import copy
import datetime as dt
import math

import pytest
import yaml

from cruijff_kit.errors import CkError
from cruijff_kit.experiment import (
    SUMMARY_NAME,
    Experiment,
    Hyper,
    binary_entropy_nats,
    extract_plan_block,
    find_experiment_dir,
)
from cruijff_kit.markdown_sections import get_section, set_section
from sanity_checks.bit_sequences.check import BitSequenceArgs, expected_for

HYPER = {
    "epochs": 2, "batch_size": 16, "lora_rank": 4, "lr": 0.003, "num_warmup_steps": 10,
    "lr_scheduler": "get_cosine_schedule_with_warmup", "log_every_n_steps": 5, "run_val_every_n_steps": 50,
    "train_on_input": True, "system_prompt": "", "seed": 42,
}


def plan_dict(tmp_path) -> dict:
    def run(name, parity, p):
        gen = BitSequenceArgs(bit_length=8, N=1000, val_size=64, bit_parity=parity, p=p, seed=3)
        return {
            "name": name,
            "dataset": {"label": f"{name}_data", "ext": ".json", "check": "bit_sequences", "generator": gen.model_dump()},
            "model": "ck-tiny-llama",
            "hyper": dict(HYPER),
            "compute": {"gpus": 0, "time": "00:10:00", "mem": "4G"},
            "expected": expected_for(gen).model_dump(),
        }

    return {
        "name": "plan_test", "kind": "sanity_check", "date": "2026-01-31",
        "purpose": "Does it learn?\nSecond line: with a colon # and a hash\n## Jobs (not a heading)",
        "experiment_dir": str(tmp_path / "exp"), "output_root": str(tmp_path / "out" / "plan_test"),
        "models_dir": str(tmp_path / "models"), "data_dir": str(tmp_path / "data"),
        "wandb_project": "bit_sequences_2026-01-31",
        "runs": [run("parity_run", True, 0.0), run("probabilistic_run", False, 0.3)],
    }


@pytest.fixture
def exp(tmp_path) -> Experiment:
    return Experiment.from_plan_dict(plan_dict(tmp_path))


def test_round_trip_is_exact(exp, tmp_path):
    path = exp.write()
    assert path == tmp_path / "exp" / SUMMARY_NAME
    loaded = Experiment.load(tmp_path / "exp")
    assert loaded == exp
    assert Experiment.load(path) == exp  # the file itself is accepted too
    first = path.read_text()
    loaded.write()
    assert path.read_text() == first


def test_summary_is_readable(exp):
    text = exp.write().read_text()
    for heading in ("Overview", "Runs", "Variables and controls", "Expected results", "Resources", "Paths",
                    "Next step", "Plan"):
        assert get_section(text, heading) is not None, heading
    assert f"ck scaffold {exp.experiment_dir}" in get_section(text, "Next step")
    expected = get_section(text, "Expected results")
    assert f"{binary_entropy_nats(0.3):.4f}" in expected and "0.0000" in expected
    variables = get_section(text, "Variables and controls")
    assert "dataset.generator.p" in variables and "bit_parity" in variables
    assert "hyper.lora_rank = 4" in variables  # a control
    assert get_section(text, "Jobs") is None  # the purpose's "## Jobs" line is quoted, not a heading


def test_paths(exp, tmp_path):
    assert exp.run_dir("parity_run") == tmp_path / "exp" / "parity_run"
    assert exp.run_output_dir("parity_run") == tmp_path / "out" / "plan_test" / "ck-out-parity_run"
    assert exp.get_run("probabilistic_run").dataset.dataset_path(exp) == tmp_path / "data" / "probabilistic_run_data.json"
    with pytest.raises(CkError, match="parity_run, probabilistic_run"):
        exp.get_run("nope")


def test_lora_alpha_is_derived_not_stored(exp):
    assert exp.runs[0].hyper.lora_alpha == 8
    assert "lora_alpha" not in exp.runs[0].hyper.model_dump()
    with pytest.raises(CkError, match="unknown key"):
        Experiment.from_plan_dict(_with(exp, lambda d: d["runs"][0]["hyper"].update(lora_alpha=8)))


def _with(exp, mutate) -> dict:
    data = copy.deepcopy(exp.model_dump(mode="json"))
    mutate(data)
    return data


@pytest.mark.parametrize("mutate,field,value", [
    (lambda d: d["runs"][0]["hyper"].update(batch_size=0), "runs[0].hyper.batch_size", "0"),
    (lambda d: d["runs"][1]["hyper"].update(lr="fast"), "runs[1].hyper.lr", "'fast'"),
    (lambda d: d["runs"][0]["dataset"]["generator"].update(p=1.5), "runs[0].dataset.generator.p", "1.5"),
    (lambda d: d["runs"][0]["dataset"]["generator"].update(val_size=1000), "runs[0].dataset.generator", None),
    (lambda d: d["runs"][0]["compute"].update(time="ninety minutes"), "runs[0].compute.time", "'ninety minutes'"),
    (lambda d: d["runs"][0]["compute"].update(mem="a lot"), "runs[0].compute.mem", None),
    (lambda d: d["runs"][0].update(name="bad name/with slash"), "runs[0].name", None),
    (lambda d: d.update(experiment_dir="relative/dir"), "experiment_dir", "'relative/dir'"),
    (lambda d: d.update(kind="study"), "kind", "'study'"),
    (lambda d: d.update(date="31/01/2026"), "date", None),
    (lambda d: d.update(date=dt.datetime(2026, 1, 31, 12, 0)), "date", None),  # YAML: unquoted 2026-01-31 12:00
    (lambda d: d["runs"][0]["compute"].update(time=0), "runs[0].compute.time", "0"),  # zero seconds, as an int
    (lambda d: d["runs"][0]["expected"].update(kind="maybe"), "runs[0].expected.kind", None),
    (lambda d: d["runs"][0]["hyper"].pop("epochs"), "runs[0].hyper.epochs", None),
    (lambda d: d["runs"][0]["hyper"].update(lr_scheduler="step"), "runs[0].hyper.lr_scheduler", None),
    (lambda d: d.update(runs=[]), "runs", None),
])
def test_validation_errors_name_the_field(exp, mutate, field, value):
    with pytest.raises(CkError) as err:
        Experiment.from_plan_dict(_with(exp, mutate))
    line = str(err.value)
    assert line.startswith(field + "=") or f": {field}=" in line, line
    if value is not None:
        assert f"={value}:" in line, line
    assert "fix:" in line and "\n" not in line


def test_cross_run_rules(exp):
    with pytest.raises(CkError, match="unique"):
        Experiment.from_plan_dict(_with(exp, lambda d: d["runs"][1].update(name="parity_run")))
    # two runs sharing a data file must share its generator arguments
    def same_label(d):
        d["runs"][1]["dataset"]["label"] = d["runs"][0]["dataset"]["label"]
    with pytest.raises(CkError, match="label"):
        Experiment.from_plan_dict(_with(exp, same_label))


def _edit_plan(path, old, new):
    text = path.read_text()
    block = extract_plan_block(text)
    assert old in block
    path.write_text(text.replace(block, block.replace(old, new, 1)))


def test_hand_edit_is_honoured(exp):
    path = exp.write()
    _edit_plan(path, "batch_size: 16", "batch_size: 4")
    _edit_plan(path, "time: 00:10:00", "time: 10:00:00")  # unquoted: YAML 1.1 reads 36000 seconds
    loaded = Experiment.load(exp.experiment_dir)
    assert loaded.runs[0].hyper.batch_size == 4 and loaded.runs[1].hyper.batch_size == 16
    assert loaded.runs[0].compute.time == "10:00:00"


@pytest.mark.parametrize("old,new,needle", [
    ("batch_size: 16", "batch_size: abc", "runs[0].hyper.batch_size='abc'"),
    ("train_on_input: true", "train_on_input: maybe", "runs[0].hyper.train_on_input='maybe'"),
    ("epochs: 2", "epochs: 2\n    epoch: 3", "runs[0].hyper.epoch"),
    ("model: ck-tiny-llama", "model: [unclosed", "not valid YAML"),
])
def test_hand_edit_invalid_is_a_clear_error(exp, old, new, needle):
    path = exp.write()
    _edit_plan(path, old, new)
    with pytest.raises(CkError) as err:
        Experiment.load(exp.experiment_dir)
    assert needle in str(err.value) and "fix:" in str(err.value)


def test_missing_summary_or_block(tmp_path, exp):
    with pytest.raises(CkError, match="has no experiment_summary.md"):
        Experiment.load(tmp_path / "nowhere")
    path = exp.write()
    path.write_text(path.read_text().replace("```yaml", "```text"))
    with pytest.raises(CkError, match="no fenced"):
        Experiment.load(path.parent)


def test_rewrite_keeps_sections_owned_by_later_steps(exp):
    path = exp.write()
    set_section(path, "Run directories", "- parity_run/\n- probabilistic_run/")
    set_section(path, "Jobs", "| run | job | state |\n|---|---|---|\n| parity_run | 17 | COMPLETED |\n\n```yaml\nname: decoy\n```")
    set_section(path, "Results", "PASS: parity_run reached 0.02 nats")
    assert Experiment.load(path.parent) == exp  # other sections, even with yaml blocks, are not the plan
    changed = exp.model_copy(deep=True)
    changed.runs[0].hyper.epochs = 7
    changed.write()
    text = path.read_text()
    assert "| parity_run | 17 | COMPLETED |" in get_section(text, "Jobs")
    assert get_section(text, "Results") == "PASS: parity_run reached 0.02 nats"
    assert get_section(text, "Run directories") == "- parity_run/\n- probabilistic_run/"
    assert Experiment.load(path.parent).runs[0].hyper.epochs == 7
    assert text.count("\n## Jobs\n") == 1


def test_expected_results():
    ln2 = math.log(2)
    assert binary_entropy_nats(0.5) == pytest.approx(ln2)
    assert binary_entropy_nats(0.0) == 0.0 == binary_entropy_nats(1.0)
    parity = expected_for(BitSequenceArgs(bit_length=8, N=100, val_size=10, bit_parity=True, p=0.0))
    assert (parity.kind, parity.floor_nats, parity.target_accuracy) == ("learnable", 0.0, 0.99)
    bern = expected_for(BitSequenceArgs(bit_length=8, N=100, val_size=10, bit_parity=False, p=0.3))
    h = -(0.3 * math.log(0.3) + 0.7 * math.log(0.7))
    assert bern.kind == "floor" and bern.floor_nats == pytest.approx(h, abs=1e-6)
    assert bern.target_accuracy == pytest.approx(0.7)
    noisy = expected_for(BitSequenceArgs(bit_length=8, N=100, val_size=10, bit_parity=True, p=0.1))
    assert noisy.kind == "floor" and noisy.target_accuracy == pytest.approx(0.9)
    assert noisy.floor_nats == pytest.approx(-(0.1 * math.log(0.1) + 0.9 * math.log(0.9)), abs=1e-6)


@pytest.mark.parametrize("kwargs", [
    {"bit_length": 0, "N": 10, "val_size": 2}, {"bit_length": 4, "N": 0, "val_size": 1},
    {"bit_length": 4, "N": 10, "val_size": 10}, {"bit_length": 4, "N": 10, "val_size": 0},
    {"bit_length": 4, "N": 10, "val_size": 2, "p": -0.1},
])
def test_generator_args_validated_like_the_generator(kwargs):
    with pytest.raises(ValueError):
        BitSequenceArgs(**{"bit_parity": True, "p": 0.0} | kwargs)


def test_hyper_extra_fields_forbidden():
    with pytest.raises(ValueError):
        Hyper(**HYPER, lora_dropout=0.1)


def test_find_experiment_dir_by_path_or_name(tmp_path, exp, monkeypatch):
    exp.write()
    assert find_experiment_dir(exp.experiment_dir) == tmp_path / "exp"
    sanity = tmp_path / "scratch" / "ck-sanity-checks" / "named"
    sanity.mkdir(parents=True)
    monkeypatch.setenv("CK_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.setenv("CK_CONFIG", str(tmp_path / "none.yaml"))
    assert find_experiment_dir("named") == sanity
    with pytest.raises(CkError, match="no such experiment"):
        find_experiment_dir("other")


def test_plan_yaml_is_plain_yaml(exp):
    data = yaml.safe_load(exp.plan_yaml())
    assert data["runs"][1]["dataset"]["generator"]["p"] == 0.3
    assert data["purpose"] == exp.purpose
