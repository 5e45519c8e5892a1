"""Verdict rules of the bit-sequences check (called by cruijff_kit.summarize through `Check.judge`).

All losses are the cross-entropy at the answer token, in nats; the noise margins and the
"still falling" rule are the core's (cruijff_kit/summarize.py docstring).

- Clean parity (bit_parity, p = 0; kind learnable): PASS when validation accuracy >= the target
  (0.99). At small bit_length a validation string whose number of ones occurs in no training string
  (e.g. 00000000: de-duplication removed its only representative from training) cannot be inferred
  by counting, so accuracy is computed on the *inferable* validation strings only (from the dataset
  file and val_predictions.jsonl); the uninferable ones are listed in the report, not held against
  the model. Validation strings leaked into training are left out too (they test memory, not the
  rule) and flagged. Below the target: INCONCLUSIVE if the validation loss was still falling at
  the end ("train longer"; the reason also gives the training loss against the floor), else FAIL.
  A parity run with shuffled labels cannot learn anything, plateaus near chance and FAILs.
- Bernoulli(p) labels (not bit_parity; kind floor): p-hat is the label frequency actually in the
  validation split (a finite split is not exactly p), the floor is H(p-hat). Loss below
  floor - margin -> FAIL (the model knows something about labels that are independent of the
  inputs: information leaked). Loss within
  [floor - margin, floor + KL(p-hat || p-hat_train) + margin + 0.02] -> PASS. The KL term is what a
  model that learned the training split's frequency exactly must pay on validation; the extra
  0.02 nats above (EXTRA_ABOVE_NATS) allows for the probability a briefly trained model still puts
  on tokens other than "0"/"1" (2 % of the mass costs 0.02 nats) - being above the floor is
  under-training, being below it is a leak, so only the upper side is widened. Above the window:
  INCONCLUSIVE if the loss was still falling, else FAIL.
- Noisy parity (bit_parity, p > 0): p-hat is the fraction of (inferable) validation labels that
  disagree with parity. PASS when accuracy is within its margin of max(p-hat, 1 - p-hat) and the
  loss within the Bernoulli window around H(p-hat) (KL term from the training split's noise rate).
  Accuracy above the window or loss below it -> FAIL (leak). Otherwise INCONCLUSIVE if still
  falling, else FAIL.
Warnings: dataset labels that do not match the declared generator (e.g. parity labels shuffled);
for Bernoulli runs, accuracy above max(p-hat, 1 - p-hat) + margin.

Across runs (`compare`): a clean-parity run whose answer loss did not end below the floor of a
Bernoulli run of the same experiment learned no more than a coin would tell it; said in one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cruijff_kit.summarize import (
    EPS_ACC,
    PASS,
    Evidence,
    RunSummary,
    is_correct,
    listing,
    finite_number,
    accuracy_margin,
    floor_window,
    judge_learnable,
    label_of,
    not_reached,
)


def parity_label(bits: str) -> str:
    return str(bits.count("1") % 2)


@dataclass
class DataFacts:
    leaked: list[str]  # validation strings that occur in training
    uninferable: set[str]  # validation strings whose number of ones occurs in no training string
    train_label_freq: float | None  # fraction of "1" labels in training
    val_label_freq: float | None
    train_parity_disagreement: float | None  # fraction of training labels != parity
    val_parity_disagreement: float | None
    n_train: int
    n_val: int


def data_facts(dataset: dict) -> DataFacts:
    """Leaks, uninferable strings and label frequencies of a dataset."""
    train = dataset.get("train") or []
    val = dataset.get("validation") or []
    train_inputs = [str(r.get("input", "")) for r in train]
    val_inputs = [str(r.get("input", "")) for r in val]
    train_set = set(train_inputs)
    leaked = sorted({s for s in val_inputs if s in train_set})
    train_ones = {s.count("1") for s in train_inputs}
    uninferable = {s for s in val_inputs if s.count("1") not in train_ones}

    def freq(rows):
        return sum(label_of(r.get("output")) == "1" for r in rows) / len(rows) if rows else None

    def disagreement(rows):
        if not rows:
            return None
        return sum(label_of(r.get("output")) != parity_label(str(r.get("input", ""))) for r in rows) / len(rows)

    return DataFacts(
        leaked=leaked, uninferable=uninferable,
        train_label_freq=freq(train), val_label_freq=freq(val),
        train_parity_disagreement=disagreement(train), val_parity_disagreement=disagreement(val),
        n_train=len(train), n_val=len(val),
    )


def rule_of(args) -> str:
    if args.bit_parity:
        return "parity" if not args.p else "noisy_parity"
    return "bernoulli"


def judge(summary: RunSummary, evidence: Evidence) -> bool:
    """The verdict of one bit-sequences run (module docstring); False when its arguments are unknown."""
    args = evidence.expectation.args
    if args is None:
        return False
    summary.rule = rule = rule_of(args)
    facts = data_facts(evidence.dataset) if evidence.dataset is not None else None
    if facts is not None:
        _check_labels_match_generator(args, facts, summary.warnings)
    if rule == "parity":
        _judge_learnable(summary, evidence, facts)
    elif rule == "bernoulli":
        _judge_bernoulli(summary, args, evidence.predictions, facts, evidence.metrics)
    else:
        _judge_noisy_parity(summary, args, evidence.predictions, facts, evidence.metrics)
    _state_power(summary, args)
    return True


def _state_power(summary: RunSummary, args) -> None:
    """A PASS on a validation set too small to tell a working pipeline from a broken one is INCONCLUSIVE."""
    from sanity_checks.bit_sequences.check import power

    if summary.verdict != PASS or not summary.judged_examples:
        return
    enough, resolves, need = power(args, summary.judged_examples)
    if not enough:
        summary.verdict = "INCONCLUSIVE"
        summary.reason = (f"passes, but on too small a validation set to tell: {resolves}; "
                          f"use val_size >= {need} ({summary.reason})")


def _judge_learnable(summary: RunSummary, evidence: Evidence, facts) -> None:
    uninferable = facts.uninferable if facts is not None else set()
    if evidence.predictions is not None:
        summary.uninferable = sorted({str(p.get("input", "")) for p in evidence.predictions} & uninferable)
    aside = ""
    if summary.uninferable:
        aside = f"; {len(summary.uninferable)} uninferable string(s) set aside: {listing(summary.uninferable)}"
        summary.warnings.append(
            f"uninferable: {len(summary.uninferable)} validation string(s) have a number of ones that no training "
            f"string has, so parity cannot be inferred by counting: {listing(summary.uninferable)}")
    judge_learnable(summary, evidence, summary.target_accuracy or 0.99, set_aside=uninferable,
                    scope="inferable " if summary.uninferable else "", aside=aside, what="validation strings")


def _check_labels_match_generator(exp, facts: DataFacts, warnings: list[str]) -> None:
    for split, n, observed in (
        ("training", facts.n_train, facts.train_parity_disagreement if exp.bit_parity else facts.train_label_freq),
        ("validation", facts.n_val, facts.val_parity_disagreement if exp.bit_parity else facts.val_label_freq),
    ):
        if observed is None or n == 0:
            continue
        if exp.bit_parity and exp.p == 0.0:
            bad = observed > 0.0
        else:
            bad = abs(observed - exp.p) > 4 * math.sqrt(exp.p * (1 - exp.p) / n) + EPS_ACC
        if bad:
            what = "disagree with parity" if exp.bit_parity else "are 1"
            warnings.append(f"{split} labels do not match the generator: {observed:.1%} of them {what}, declared p={exp.p}")


def _judge_bernoulli(summary, exp, predictions, facts, metrics) -> None:
    n = summary.val_examples or (facts.n_val if facts else 0) or len(predictions or []) or 1
    if facts is not None and facts.val_label_freq is not None:
        p_hat, p_train = facts.val_label_freq, facts.train_label_freq
    elif predictions:
        p_hat, p_train = sum(label_of(p.get("target")) == "1" for p in predictions) / len(predictions), None
    else:
        p_hat, p_train = float(exp.p), None
        summary.warnings.append(f"validation label frequency unknown: using the declared p={p_hat}")
    low, high, margin = floor_window(summary, p_hat, p_train, predictions, n)
    summary.target_accuracy = max(p_hat, 1 - p_hat)  # what the plot draws: the numbers of this verdict
    loss = summary.final_val_answer_loss
    summary.judged_loss, summary.judged_examples = loss, n
    summary.judged_accuracy = summary.final_val_answer_acc
    best_acc = max(p_hat, 1 - p_hat)
    if summary.judged_accuracy is not None and summary.judged_accuracy > best_acc + accuracy_margin(n, best_acc):
        summary.warnings.append(f"accuracy {summary.judged_accuracy:.3f} above the best possible {best_acc:.3f} "
                                "for labels independent of the input: information leaked")
    where = f"H(p̂={p_hat:.3f}) = {summary.floor_nats:.4f}"
    if loss is None:
        summary.reason = "the final validation row has no val_answer_loss"
    elif loss < low:
        leak = f"; {len(summary.leaked)} validation strings occur in training" if summary.leaked else ""
        summary.reason = (f"loss {loss:.4f} is below the floor {where} by more than {margin:.4f}: "
                          f"the labels are independent of the inputs, so information leaked{leak}")
    elif loss <= high:
        summary.verdict = PASS
        summary.reason = f"loss {loss:.4f} within [{low:.4f}, {high:.4f}] around the floor {where}"
    else:
        not_reached(summary, metrics, margin, f"loss {loss:.4f} above {high:.4f} (floor {where})")


def _judge_noisy_parity(summary, exp, predictions, facts, metrics) -> None:
    uninferable = facts.uninferable if facts is not None else set()
    judged = [p for p in (predictions or []) if str(p.get("input", "")) not in uninferable]
    if predictions and uninferable:
        summary.uninferable = sorted({str(p.get("input", "")) for p in predictions} & uninferable)
        summary.warnings.append(f"uninferable: {len(summary.uninferable)} validation string(s) set aside: "
                                f"{listing(summary.uninferable)}")
    p_train = facts.train_parity_disagreement if facts is not None else None
    if judged:
        n = len(judged)
        p_hat = sum(label_of(p.get("target")) != parity_label(str(p.get("input", ""))) for p in judged) / n
        accuracy = sum(is_correct(p) for p in judged) / n
        losses = [v for p in judged if (v := finite_number(p.get("answer_loss"))) is not None]
        loss = sum(losses) / len(losses) if losses else summary.final_val_answer_loss
    else:
        n = summary.val_examples or 1
        if facts is not None and facts.val_parity_disagreement is not None:
            p_hat = facts.val_parity_disagreement
        else:
            p_hat = float(exp.p)
            summary.warnings.append(f"validation noise rate unknown: using the declared p={p_hat}")
        accuracy, loss = summary.final_val_answer_acc, summary.final_val_answer_loss
    # the noise margin is about the event "label disagrees with parity", whose frequency is p-hat
    flips = [{"answer_loss": p.get("answer_loss"),
              "target": "1" if label_of(p.get("target")) != parity_label(str(p.get("input", ""))) else "0"} for p in judged]
    low, high, margin = floor_window(summary, p_hat, p_train, flips, n)
    summary.judged_loss, summary.judged_accuracy, summary.judged_examples = loss, accuracy, n
    best_acc = max(p_hat, 1 - p_hat)
    summary.target_accuracy = best_acc
    acc_margin = accuracy_margin(n, best_acc)
    where = f"H(p̂={p_hat:.3f}) = {summary.floor_nats:.4f}"
    if loss is None or accuracy is None:
        summary.reason = "the final validation row has no val_answer_loss / val_answer_acc"
    elif loss < low or accuracy > best_acc + acc_margin:
        summary.reason = (f"better than possible: loss {loss:.4f} (floor {where}), accuracy {accuracy:.3f} "
                          f"(best {best_acc:.3f}): information leaked")
    elif loss <= high and accuracy >= best_acc - acc_margin:
        summary.verdict = PASS
        summary.reason = (f"accuracy {accuracy:.3f} within {acc_margin:.3f} of {best_acc:.3f} and loss {loss:.4f} "
                          f"within [{low:.4f}, {high:.4f}] around the floor {where}")
    else:
        not_reached(summary, metrics, margin,
                     f"accuracy {accuracy:.3f} (best {best_acc:.3f}) / loss {loss:.4f} (floor {where}) not reached")


def compare(runs: list[tuple[object, RunSummary]]) -> list[str]:
    """One line when a clean-parity run ended no better than a Bernoulli run's floor (module docstring)."""
    learned = [(a, s) for a, s in runs if a is not None and rule_of(a) == "parity" and s.judged_loss is not None]
    floors = [(a, s) for a, s in runs if a is not None and rule_of(a) == "bernoulli" and s.floor_nats]
    lines = []
    for _, parity in learned:
        for _, coin in floors:
            if parity.judged_loss >= coin.floor_nats:
                lines.append(f"{parity.name} ended at {parity.judged_loss:.4f} nats, not below the floor "
                             f"{coin.floor_nats:.4f} of {coin.name}: it learned no more than the label frequency")
            elif parity.verdict == PASS and coin.verdict == PASS:
                lines.append(f"{parity.name} ({parity.judged_loss:.4f} nats) learned the rule; {coin.name} stayed at "
                             f"its floor {coin.floor_nats:.4f}: the pipeline tells signal from noise")
    return lines
