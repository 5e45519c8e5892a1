"""Verdict rules of `ck summarize`, on synthetic metrics / predictions / dataset files.

The training curves are made up; the datasets, the label frequencies, the floors and the leaks are
real properties of the files built here, so each test checks that a planted condition gets its
verdict (and would get another one without the plant).
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from cruijff_kit.experiment import binary_entropy_nats
from cruijff_kit.summarize import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    Expectation,
    judge_run,
    read_jsonl,
    results_markdown,
    summarize_experiment,
)
from sanity_checks.bit_sequences.check import CHECK, BitSequenceArgs
from sanity_checks.bit_sequences.verdict import data_facts

def bits(parity: bool, p: float) -> BitSequenceArgs:
    return BitSequenceArgs(bit_length=8, N=2000, val_size=64, bit_parity=parity, p=p)


PARITY = Expectation(kind="learnable", floor_nats=0.0, target_accuracy=0.99, check=CHECK, args=bits(True, 0.0))


def bernoulli(p: float) -> Expectation:
    return Expectation(kind="floor", floor_nats=binary_entropy_nats(p), target_accuracy=max(p, 1 - p),
                       check=CHECK, args=bits(False, p))


def noisy_parity(p: float) -> Expectation:
    return Expectation(kind="floor", floor_nats=binary_entropy_nats(p), target_accuracy=1 - p,
                       check=CHECK, args=bits(True, p))


# --------------------------------------------------------------------------- synthetic files


def parity(bits: str) -> str:
    return str(bits.count("1") % 2)


def make_dataset(*, bit_length=8, n_train=1500, val_size=64, labels="parity", p=0.0, seed=3,
                 force_val=(), leak=0, shuffle_train=False) -> dict:
    """Validation: `val_size` distinct strings (including `force_val`); training: draws not in validation
    (as the generator promises) unless `leak` > 0 copies that many validation rows into training."""
    rng = random.Random(seed)
    width = f"0{bit_length}b"
    val_strings = list(dict.fromkeys(force_val))
    while len(val_strings) < val_size:
        s = format(rng.randrange(2 ** bit_length), width)
        if s not in val_strings:
            val_strings.append(s)
    val_set = set(val_strings)

    def label(bits: str) -> str:
        draw = rng.random() < p
        if labels == "parity":
            return str(int(parity(bits)) ^ draw)
        return str(int(draw))

    train = []
    while len(train) < n_train:
        s = format(rng.randrange(2 ** bit_length), width)
        if s not in val_set:
            train.append({"instruction": "", "input": s, "output": label(s)})
    validation = [{"instruction": "", "input": s, "output": label(s)} for s in val_strings]
    if leak:
        train[:leak] = [dict(row) for row in validation[:leak]]
    if shuffle_train:
        outs = [r["output"] for r in train]
        rng.shuffle(outs)
        for row, out in zip(train, outs):
            row["output"] = out
    return {"train": train, "validation": validation}


def make_predictions(dataset: dict, prob_of_one) -> list[dict]:
    """Rows as the recipe writes them, for a model that gives P(label 1) = prob_of_one(input)."""
    rows = []
    for i, row in enumerate(dataset["validation"]):
        q = min(max(prob_of_one(row["input"]), 1e-6), 1 - 1e-6)
        target = row["output"]
        rows.append({"index": i, "input": row["input"], "target": target, "predicted": "1" if q >= 0.5 else "0",
                     "answer_loss": -math.log(q if target == "1" else 1 - q)})
    return rows


def curve(start: float, end: float, n: int, shape: float = 3.0) -> list[float]:
    """n values decaying from start to (about) end."""
    return [end + (start - end) * math.exp(-shape * i / max(n - 1, 1)) for i in range(n)]


def make_metrics(*, steps=200, log_every=5, val_every=50, train_loss=(0.69, 0.01), train_acc=(0.5, 1.0),
                 val_loss=(0.69, 0.01), val_acc=(0.5, 1.0), final=None, n_val=64, validation=True, end=True,
                 shape=3.0) -> list[dict]:
    """metrics.jsonl rows (docs/formats.md). `final` = (loss, acc) of the final validation."""
    rows = []
    train_steps = list(range(log_every, steps + 1, log_every))
    for step, loss, acc in zip(train_steps, curve(*train_loss, len(train_steps), shape), curve(*train_acc, len(train_steps), shape)):
        rows.append({"event": "train", "step": step, "epoch": 0, "wall_time": step * 0.1, "time": 0.0,
                     "loss": loss, "lr": 1e-3, "tokens_per_second_per_gpu": 1.0,
                     "train_answer_loss": loss, "train_answer_acc": acc})
        if validation and step % val_every == 0 and step < steps:
            frac = step / steps
            v_loss = val_loss[1] + (val_loss[0] - val_loss[1]) * math.exp(-shape * frac)
            v_acc = val_acc[1] + (val_acc[0] - val_acc[1]) * math.exp(-shape * frac)
            rows.append({"event": "val", "step": step, "epoch": 0, "wall_time": 0.0, "time": 0.0, "val_loss": v_loss,
                         "val_answer_loss": v_loss, "val_answer_acc": v_acc, "val_examples": n_val, "final": False})
    if validation:
        f_loss, f_acc = final if final is not None else (val_loss[1], val_acc[1])
        rows.append({"event": "val", "step": steps, "epoch": 0, "wall_time": 0.0, "time": 0.0, "val_loss": f_loss,
                     "val_answer_loss": f_loss, "val_answer_acc": f_acc, "val_examples": n_val, "final": True})
    if end:
        rows.append({"event": "end", "step": steps, "epoch": 0, "steps": steps, "wall_time": steps * 0.1, "time": 0.0})
    return rows


def final_of(predictions: list[dict]) -> tuple[float, float]:
    loss = sum(p["answer_loss"] for p in predictions) / len(predictions)
    acc = sum(p["predicted"] == p["target"] for p in predictions) / len(predictions)
    return loss, acc


# --------------------------------------------------------------------------- clean parity


def test_clean_parity_learned_passes():
    data = make_dataset()
    assert data_facts(data).uninferable == set() and data_facts(data).leaked == []
    preds = make_predictions(data, lambda s: 0.999 if parity(s) == "1" else 0.001)
    summary = judge_run("parity_run", make_metrics(final=final_of(preds)), preds, data, PARITY)
    assert summary.verdict == PASS, summary.reason
    assert summary.judged_accuracy == 1.0
    assert summary.warnings == []


def test_uninferable_strings_are_set_aside_not_failed():
    # 00000000 is the only string with no ones; in validation it is absent from training.
    data = make_dataset(force_val=["00000000"])
    facts = data_facts(data)
    assert facts.uninferable == {"00000000"}
    # a counting model has no idea about a count it never saw: it gets 00000000 wrong
    preds = make_predictions(data, lambda s: 0.9 if s == "00000000" else (0.999 if parity(s) == "1" else 0.001))
    loss, acc = final_of(preds)
    assert acc < 0.99  # 63/64 over all strings: would FAIL if the uninferable string counted
    summary = judge_run("parity_run", make_metrics(final=(loss, acc)), preds, data, PARITY)
    assert summary.verdict == PASS, summary.reason
    assert summary.uninferable == ["00000000"]
    assert summary.judged_examples == 63
    assert "00000000" in summary.reason and any("uninferable" in w for w in summary.warnings)


def test_wrong_inferable_string_still_fails():
    data = make_dataset(force_val=["00000000"])
    wrong = data["validation"][5]["input"]
    assert wrong != "00000000"
    preds = make_predictions(data, lambda s: (0.999 if parity(s) == "1" else 0.001) if s != wrong
                             else (0.001 if parity(s) == "1" else 0.999))
    metrics = make_metrics(final=final_of(preds), val_loss=(0.69, 0.05), shape=8.0)  # plateaued
    summary = judge_run("parity_run", metrics, preds, data, PARITY)
    assert summary.verdict == FAIL, summary.reason
    assert summary.judged_accuracy == pytest.approx(62 / 63)


def test_planted_fault_shuffled_labels_parity_fails():
    data = make_dataset(shuffle_train=True)
    assert data_facts(data).train_parity_disagreement > 0.3
    rng = random.Random(1)
    preds = make_predictions(data, lambda s: 0.5 + rng.uniform(-0.05, 0.05))  # nothing to learn
    metrics = make_metrics(train_loss=(0.70, 0.69), train_acc=(0.5, 0.5), val_loss=(0.70, 0.695),
                           val_acc=(0.5, 0.5), final=final_of(preds))
    summary = judge_run("parity_run", metrics, preds, data, PARITY)
    assert summary.verdict == FAIL, summary.reason
    assert summary.still_falling is False
    assert any("do not match the generator" in w for w in summary.warnings)


def test_parity_still_improving_is_inconclusive():
    data = make_dataset()
    rng = random.Random(2)
    preds = make_predictions(data, lambda s: (0.8 if parity(s) == "1" else 0.2) if rng.random() < 0.8 else 0.5)
    loss, acc = final_of(preds)
    assert acc < 0.99
    # the loss is dropping steeply up to the end: undertrained, not broken
    metrics = make_metrics(train_loss=(0.69, 0.0), val_loss=(0.69, 0.0), final=(loss, acc), shape=1.0)
    summary = judge_run("parity_run", metrics, preds, data, PARITY)
    assert summary.verdict == INCONCLUSIVE, summary.reason
    assert "train longer" in summary.reason


# --------------------------------------------------------------------------- pipeline faults


def test_planted_fault_validation_disabled_fails():
    data = make_dataset()
    summary = judge_run("parity_run", make_metrics(validation=False), None, data, PARITY)
    assert summary.verdict == FAIL
    assert "validation was not wired" in summary.reason


def test_missing_metrics_is_a_fail_not_a_crash(tmp_path):
    assert read_jsonl(tmp_path / "nope.jsonl") is None
    summary = judge_run("parity_run", None, None, None, PARITY)
    assert summary.verdict == FAIL and "no metrics.jsonl" in summary.reason


def test_unfinished_training_fails():
    data = make_dataset()
    preds = make_predictions(data, lambda s: 0.999 if parity(s) == "1" else 0.001)
    summary = judge_run("parity_run", make_metrics(final=final_of(preds), end=False), preds, data, PARITY)
    assert summary.verdict == FAIL and "did not finish" in summary.reason


def test_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"event": "train", "step": 1}) + "\n" + '{"event": "tr')
    assert read_jsonl(path) == [{"event": "train", "step": 1}]


def test_planted_fault_leak_is_flagged_for_parity():
    data = make_dataset(leak=10)
    facts = data_facts(data)
    assert len(facts.leaked) == 10
    preds = make_predictions(data, lambda s: 0.999 if parity(s) == "1" else 0.001)
    summary = judge_run("parity_run", make_metrics(final=final_of(preds)), preds, data, PARITY)
    assert any(w.startswith("leak: 10 validation input") for w in summary.warnings)
    assert sorted(summary.leaked) == sorted(facts.leaked)
    assert summary.judged_examples == 54  # leaked strings do not count toward generalisation


# --------------------------------------------------------------------------- Bernoulli


def test_bernoulli_at_the_floor_passes_and_floor_uses_validation_frequency():
    data = make_dataset(labels="bernoulli", p=0.3, n_train=3000, val_size=200, bit_length=12, seed=3)
    facts = data_facts(data)
    p_train = facts.train_label_freq
    preds = make_predictions(data, lambda s: p_train)  # learned the training frequency exactly
    summary = judge_run("probabilistic_run", make_metrics(val_loss=(0.8, 0.62), final=final_of(preds), n_val=200),
                        preds, data, bernoulli(0.3))
    assert summary.verdict == PASS, summary.reason
    assert summary.p_hat == pytest.approx(facts.val_label_freq)
    assert summary.floor_nats == pytest.approx(binary_entropy_nats(facts.val_label_freq))


def test_planted_fault_bernoulli_leak_below_floor_fails():
    data = make_dataset(labels="bernoulli", p=0.5, val_size=64, leak=64, seed=4)
    labels = {row["input"]: row["output"] for row in data["validation"]}
    # memorised the leaked labels
    preds = make_predictions(data, lambda s: 0.95 if labels[s] == "1" else 0.05)
    loss, acc = final_of(preds)
    summary = judge_run("probabilistic_run", make_metrics(final=(loss, acc)), preds, data, bernoulli(0.5))
    assert summary.verdict == FAIL, summary.reason
    assert "below the floor" in summary.reason and "leaked" in summary.reason
    assert any(w.startswith("leak:") for w in summary.warnings)
    # without the memorisation the same files pass: the verdict comes from the loss, not the flag
    honest = make_predictions(data, lambda s: 0.5)
    again = judge_run("probabilistic_run", make_metrics(final=final_of(honest)), honest, data, bernoulli(0.5))
    assert again.verdict == PASS, again.reason


def test_bernoulli_above_floor_inconclusive_if_falling_else_fail():
    data = make_dataset(labels="bernoulli", p=0.5, val_size=64, seed=5)
    preds = make_predictions(data, lambda s: 0.8)  # confidently wrong half the time: far above ln 2
    loss, acc = final_of(preds)
    assert loss > math.log(2) + 0.1
    falling = make_metrics(val_loss=(2.0, loss - 0.3), final=(loss, acc), shape=1.0)
    flat = make_metrics(val_loss=(loss + 0.001, loss), final=(loss, acc))
    assert judge_run("r", falling, preds, data, bernoulli(0.5)).verdict == INCONCLUSIVE
    summary = judge_run("r", flat, preds, data, bernoulli(0.5))
    assert summary.verdict == FAIL and "no longer falling" in summary.reason


def test_overfitting_is_warned():
    data = make_dataset(labels="bernoulli", p=0.5, val_size=64, seed=6)
    preds = make_predictions(data, lambda s: 0.5)
    metrics = make_metrics(train_loss=(0.69, 0.05), val_loss=(0.69, 0.69), final=final_of(preds))
    metrics_ok = make_metrics(train_loss=(0.69, 0.68), val_loss=(0.69, 0.69), final=final_of(preds))
    assert any("overfitting" in w for w in judge_run("r", metrics, preds, data, bernoulli(0.5)).warnings)
    assert not any("overfitting" in w for w in judge_run("r", metrics_ok, preds, data, bernoulli(0.5)).warnings)


# --------------------------------------------------------------------------- noisy parity


def test_noisy_parity_near_one_minus_p_passes():
    data = make_dataset(p=0.1, n_train=3000, val_size=400, bit_length=12, seed=7)
    facts = data_facts(data)
    q = 1 - facts.train_parity_disagreement
    preds = make_predictions(data, lambda s: q if parity(s) == "1" else 1 - q)
    summary = judge_run("noisy_run", make_metrics(final=final_of(preds), n_val=400), preds, data, noisy_parity(0.1))
    assert summary.verdict == PASS, summary.reason
    assert summary.judged_accuracy == pytest.approx(1 - facts.val_parity_disagreement)
    # a model that also "knows" the flipped labels is better than possible: leak
    labels = {row["input"]: row["output"] for row in data["validation"]}
    cheat = make_predictions(data, lambda s: 0.99 if labels[s] == "1" else 0.01)
    bad = judge_run("noisy_run", make_metrics(final=final_of(cheat), n_val=400), cheat, data, noisy_parity(0.1))
    assert bad.verdict == FAIL and "leaked" in bad.reason


# --------------------------------------------------------------------------- experiment + CLI


def _write_experiment(tmp_path: Path, runs: dict[str, tuple[dict, list[dict] | None, list[dict] | None]]) -> Path:
    """An experiment dir with a real plan (built by design's plan builder) and synthetic run outputs."""
    from cruijff_kit.design import build_plan
    from cruijff_kit.settings import load_settings

    settings = load_settings({"scratch": str(tmp_path / "scratch"), "data_dir": str(tmp_path / "data")},
                             env={}, path=tmp_path / "settings.yaml")
    exp = build_plan("bit_sequences", "embedded", settings=settings, name="sanity_check_bit_sequences_test")
    exp_dir = Path(exp.experiment_dir)
    exp_dir.mkdir(parents=True)
    (exp_dir / "experiment_summary.md").write_text(
        "# test experiment\n\n## Plan\n\n```yaml\n" + exp.plan_yaml() + "```\n")
    for run in exp.runs:
        dataset, metrics, preds = runs[run.name]
        path = run.dataset.dataset_path(exp)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataset))
        logs = exp.run_output_dir(run.name) / "logs"
        logs.mkdir(parents=True)
        if metrics is not None:
            (logs / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
        if preds is not None:
            (logs / "val_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in preds))
    return exp_dir


def _healthy_runs() -> dict:
    parity_data = make_dataset(seed=4)
    parity_preds = make_predictions(parity_data, lambda s: 0.999 if parity(s) == "1" else 0.001)
    bern_data = make_dataset(labels="bernoulli", p=0.5, seed=11)
    p_train = data_facts(bern_data).train_label_freq
    bern_preds = make_predictions(bern_data, lambda s: p_train)
    return {
        "parity_run": (parity_data, make_metrics(final=final_of(parity_preds)), parity_preds),
        "probabilistic_run": (bern_data, make_metrics(train_loss=(0.75, 0.69), train_acc=(0.5, 0.5), val_loss=(0.75, 0.69),
                                                     val_acc=(0.5, 0.5), final=final_of(bern_preds)), bern_preds),
    }


def test_summarize_experiment_writes_results_json_and_plots(tmp_path):
    exp_dir = _write_experiment(tmp_path, _healthy_runs())
    result = summarize_experiment(exp_dir)
    assert [r.verdict for r in result.runs] == [PASS, PASS], [r.reason for r in result.runs]
    assert result.exit_code == 0
    for png in ["parity_run.png", "probabilistic_run.png", "comparison.png"]:
        data = (exp_dir / "plots" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    saved = json.loads((exp_dir / "summary.json").read_text())
    assert saved["all_pass"] is True and [r["name"] for r in saved["runs"]] == ["parity_run", "probabilistic_run"]
    text = (exp_dir / "experiment_summary.md").read_text()
    assert "## Results" in text and "![parity_run](plots/parity_run.png)" in text and "```yaml" in text
    # re-summarizing replaces the section rather than appending another
    summarize_experiment(exp_dir)
    assert (exp_dir / "experiment_summary.md").read_text().count("## Results") == 1
    markdown = results_markdown(result)
    assert all(f"| {name} | **PASS** |" in markdown for name in ("parity_run", "probabilistic_run"))
    assert "| train/val tracking | **PASS** |" in markdown  # the experiment-level verdict of two runs
    assert all(r.warnings == [] for r in result.runs), [r.warnings for r in result.runs]


def test_ck_summarize_exit_code_and_json(tmp_path):
    runs = _healthy_runs()
    data, _, _ = runs["probabilistic_run"]
    runs["probabilistic_run"] = (data, None, None)  # the run never wrote metrics
    exp_dir = _write_experiment(tmp_path, runs)
    proc = subprocess.run([sys.executable, "-m", "cruijff_kit", "summarize", str(exp_dir)],
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "PASS" in proc.stdout and "NOT RUN" in proc.stdout and "FAIL" not in proc.stdout  # never ran: not a FAIL
    proc = subprocess.run([sys.executable, "-m", "cruijff_kit", "summarize", str(exp_dir), "--json", "--no-write"],
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    verdicts = {r["name"]: r["verdict"] for r in json.loads(proc.stdout)["runs"]}
    assert verdicts == {"parity_run": PASS, "probabilistic_run": "NOT RUN"}
    proc = subprocess.run([sys.executable, "-m", "cruijff_kit", "summarize", str(tmp_path / "nowhere")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "experiment_summary.md" in proc.stderr


def test_ck_summarize_takes_an_experiment_name_under_the_scratch(tmp_path, monkeypatch, capsys):
    from cruijff_kit.cli import main

    exp_dir = _write_experiment(tmp_path, _healthy_runs())
    assert exp_dir.parent == tmp_path / "scratch" / "ck-sanity-checks"
    monkeypatch.setenv("CK_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.chdir(tmp_path)  # the name is not a path from here
    assert main(["summarize", exp_dir.name, "--json", "--no-write"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["experiment_dir"] == str(exp_dir) and printed["all_pass"] is True
    assert main(["summarize", "no_such_experiment"]) == 2
    assert "no such experiment directory" in capsys.readouterr().err


def test_bernoulli_chance_agreement_below_floor_is_not_called_a_leak():
    """A model whose predictions vary from string to string (but know nothing) can land a little below
    H(p-hat) when its variation happens to line up with random labels; that is noise, not a leak."""
    for seed in range(50):
        data = make_dataset(labels="bernoulli", p=0.5, val_size=64, seed=100 + seed)
        wobble = random.Random(seed)
        q = {row["input"]: 0.5 + wobble.uniform(-0.12, 0.12) for row in data["validation"]}
        preds = make_predictions(data, lambda s: q[s])
        loss, acc = final_of(preds)
        if loss < binary_entropy_nats(data_facts(data).val_label_freq) - 0.012:  # below floor - EPS
            break
    else:
        pytest.fail("no seed produced a chance dip below the floor")
    summary = judge_run("probabilistic_run", make_metrics(final=(loss, acc)), preds, data, bernoulli(0.5))
    assert summary.verdict == PASS, summary.reason


@pytest.mark.training
def test_planted_fault_real_training_with_validation_disabled_fails(tmp_path):
    """Real pipeline, short runs: validation turned off by a hand edit of parity_run's finetune.yaml
    must come out as FAIL "validation was not wired", while the untouched run is judged on its numbers."""
    import yaml

    from cruijff_kit.design import design_check
    from cruijff_kit.monitor import run_experiment
    from cruijff_kit.scaffold import scaffold_experiment
    from cruijff_kit.settings import load_settings

    settings = load_settings({"scratch": str(tmp_path / "scratch"), "data_dir": str(tmp_path / "data")},
                             env={}, path=tmp_path / "settings.yaml")
    exp_dir = design_check("bit_sequences", "embedded", settings=settings, name="planted_no_val",
                                   overrides={"max_steps_per_epoch": 15, "log_every_n_steps": 5, "run_val_every_n_steps": 10})
    scaffold_experiment(exp_dir, settings=settings, progress=False)
    config_path = exp_dir / "parity_run" / "finetune.yaml"
    config = yaml.safe_load(config_path.read_text())
    assert config["run_val_every_n_steps"] == 10 and "dataset_val" in config
    config["run_val_every_n_steps"] = 0
    del config["dataset_val"]
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    states = run_experiment(exp_dir, executor="local", poll=0.5, live=False, max_local_jobs=2)
    assert states == {"parity_run": "COMPLETED", "probabilistic_run": "COMPLETED"}
    result = summarize_experiment(exp_dir)
    runs = {r.name: r for r in result.runs}
    assert runs["parity_run"].verdict == FAIL
    assert "validation was not wired" in runs["parity_run"].reason
    assert runs["probabilistic_run"].final_val_answer_loss is not None  # the control run did validate
    assert "validation was not wired" not in runs["probabilistic_run"].reason
    assert result.exit_code == 1


def test_one_noisy_evaluation_does_not_make_a_flat_curve_falling():
    from cruijff_kit.summarize import fitted_drop, loss_drop

    flat_with_outlier = [(150, 0.80), (190, 0.72), (225, 0.73), (260, 0.72), (300, 0.725)]
    steadily_falling = [(s, 0.80 - 0.08 * (s - 150) / 150) for s in (150, 190, 225, 260, 300)]
    assert flat_with_outlier[0][1] - flat_with_outlier[-1][1] == pytest.approx(0.075)  # naive: "falling"
    assert fitted_drop(flat_with_outlier) < 0.03
    assert fitted_drop(steadily_falling) == pytest.approx(0.08)

    def metrics_with(val_points):
        rows = [r for r in make_metrics(steps=300, validation=False)]
        rows += [{"event": "val", "step": s, "val_answer_loss": v, "val_answer_acc": 0.5, "val_examples": 64,
                  "final": s == 300} for s, v in val_points]
        return rows

    assert loss_drop(metrics_with(flat_with_outlier))[0] == pytest.approx(fitted_drop(flat_with_outlier))
    data = make_dataset(labels="bernoulli", p=0.5, seed=8)
    preds = make_predictions(data, lambda s: 0.5)
    for p in preds:  # 6 % of the probability on tokens other than "0"/"1": above the window
        p["answer_loss"] += -math.log(0.94)
    judge = lambda pts: judge_run("r", metrics_with(pts[:-1] + [(300, final_of(preds)[0])]), preds, data, bernoulli(0.5))
    assert judge(flat_with_outlier).verdict == FAIL
    assert judge([(150, 0.95), (190, 0.88), (225, 0.82), (260, 0.77), (300, 0.75)]).verdict == INCONCLUSIVE


def test_job_state_from_the_monitor_explains_or_defers_the_verdict(tmp_path):
    from cruijff_kit.monitor import RunState, RunStateFile

    runs = _healthy_runs()
    parity_data, _, _ = runs["parity_run"]
    bern_data, _, _ = runs["probabilistic_run"]
    runs["parity_run"] = (parity_data, None, None)
    runs["probabilistic_run"] = (bern_data, None, None)
    exp_dir = _write_experiment(tmp_path, runs)
    state = RunStateFile(exp_dir)
    state.executor = "local"
    state.runs = {"parity_run": RunState(job_id="local-1", state="FAILED", exit_code=1),
                  "probabilistic_run": RunState(job_id="local-2", state="RUNNING")}
    state.save()
    result = summarize_experiment(exp_dir, write=False)
    verdicts = {r.name: (r.verdict, r.reason) for r in result.runs}
    assert verdicts["parity_run"][0] == FAIL and "job local-1 FAILED, exit 1" in verdicts["parity_run"][1]
    # no metrics yet and the job still running: pending, not judged
    assert verdicts["probabilistic_run"][0] == "PENDING" and "still RUNNING" in verdicts["probabilistic_run"][1]


# --------------------------------------------------------------------------- verdicts that state their power


@pytest.mark.parametrize("val_size, verdict", [(16, INCONCLUSIVE), (200, PASS)])
def test_a_bernoulli_pass_on_too_few_rows_is_inconclusive(val_size, verdict):
    """16 rows at p = 0.3 carry ~5 of the rarer label: the band is too wide for a PASS to mean anything."""
    data = make_dataset(labels="bernoulli", p=0.3, n_train=3000, val_size=val_size, bit_length=12, seed=3)
    p_train = data_facts(data).train_label_freq
    preds = make_predictions(data, lambda s: p_train)
    summary = judge_run("probabilistic_run", make_metrics(final=final_of(preds), n_val=val_size), preds, data,
                        bernoulli(0.3))
    assert summary.verdict == verdict, summary.reason
    if verdict == INCONCLUSIVE:
        assert "too small a validation set" in summary.reason and "val_size >= 67" in summary.reason
    # the plot's target accuracy is the verdict's: the best accuracy for the observed label share
    p_hat = data_facts(data).val_label_freq
    assert summary.target_accuracy == pytest.approx(max(p_hat, 1 - p_hat))


def test_design_warns_when_the_validation_set_cannot_tell(tmp_path):
    from cruijff_kit.design import build_plan, verify
    from cruijff_kit.settings import load_settings

    settings = load_settings({"scratch": str(tmp_path)}, env={}, path=tmp_path / "s.yaml")
    exp = build_plan("bit_sequences", "embedded", settings=settings, name="small",
                     extra_runs=[{"name": "tiny_bern", "bit_parity": False, "p": 0.3, "val_size": 16, "N": 2000}])
    checks = {c.description: c for c in verify(exp) if c.action == "VERIFY_DATASET"}
    small = checks["dataset for tiny_bern"]
    assert small.warning and "val_size >= 67" in small.explanation
    assert not checks["dataset for probabilistic_run"].warning  # the preset's 64 rows at p = 0.5 are enough
    assert not checks["dataset for parity_run"].warning
