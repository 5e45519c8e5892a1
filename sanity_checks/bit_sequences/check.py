"""The bit-sequences sanity check as a cruijff_kit Check (docs/checks.md).

Random bit strings labelled by parity (a function of the input: learnable, answer loss -> 0) or by a
Bernoulli(p) draw independent of the input (answer loss floor H(p)); parity labels may be flipped
with probability p (noisy parity: floor H(p), best accuracy 1 - p).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cruijff_kit.checks import Check, Finding, Option, check_dataset_shape
from cruijff_kit.errors import CkError
from cruijff_kit.experiment import LEARNABLE_TARGET_ACCURACY, Expected, binary_entropy_nats
from sanity_checks.bit_sequences import presets
from sanity_checks.bit_sequences.presets import SWEEP_OVERRIDES

LABEL_KINDS = ("parity", "bernoulli")
# The seed README's file names, kept when the seed preset is used unchanged.
SEED_LABELS = {"parity_run": "parity", "probabilistic_run": "prob_p05"}


class BitSequenceArgs(BaseModel):
    """Arguments of the bit-sequences generator (`ck generate bit-sequences`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    bit_length: int = Field(ge=1, le=63)  # the generator's limit (numpy RandomState int64 draws)
    N: int = Field(ge=1)
    val_size: int = Field(ge=1)
    bit_parity: bool
    p: float = Field(ge=0.0, le=1.0)
    seed: int = Field(default=42, ge=0, lt=2**32)

    @model_validator(mode="after")
    def _val_below_n(self) -> "BitSequenceArgs":
        if not 0 < self.val_size < self.N:
            raise ValueError(f"val_size ({self.val_size}) must be between 0 and N ({self.N}), exclusive")
        return self


def expected_for(args: BitSequenceArgs) -> Expected:
    """The best any model can do on validation, at the answer token."""
    floor = binary_entropy_nats(args.p)
    best_accuracy = max(args.p, 1.0 - args.p)
    if args.bit_parity and args.p == 0.0:
        return Expected(
            kind="learnable", floor_nats=0.0, target_accuracy=LEARNABLE_TARGET_ACCURACY,
            note=f"parity of {args.bit_length} bits is a function of the input: answer loss should fall "
                 f"toward 0 nats and accuracy reach {LEARNABLE_TARGET_ACCURACY}",
        )
    if args.bit_parity:
        note = (f"parity with labels flipped with probability {args.p}: answer loss cannot go below "
                f"H({args.p}) = {floor:.4f} nats; the best accuracy is {best_accuracy:.4f}")
    else:
        note = (f"labels ~ Bernoulli({args.p}) independent of the input: answer loss should plateau at "
                f"H({args.p}) = {floor:.4f} nats and accuracy at {best_accuracy:.4f}, not better")
    return Expected(kind="floor", floor_nats=round(floor, 6), target_accuracy=round(best_accuracy, 6), note=note)


def dataset_label(args: BitSequenceArgs) -> str:
    """A file name that encodes every generator argument, so different data never share a file."""
    kind = "parity" if args.bit_parity else "bernoulli"
    p = "" if args.bit_parity and args.p == 0 else "_p" + f"{args.p:g}".replace(".", "")
    return f"{kind}{p}_L{args.bit_length}_N{args.N}_V{args.val_size}_s{args.seed}"


def expected_dedup_loss(gen: BitSequenceArgs) -> float:
    """Expected fraction of training rows dropped because their string also occurs in validation.

    The generator draws strings uniformly with replacement; a given string is among the val_size
    validation draws with probability 1 - (1 - 2^-L)^val_size.
    """
    return -math.expm1(gen.val_size * math.log1p(-(2.0 ** -gen.bit_length)))


def labels_name(args: BitSequenceArgs) -> str:
    if args.bit_parity:
        return "parity" if args.p == 0 else f"parity, flipped w.p. {args.p:g}"
    return f"Bernoulli({args.p:g})"


# The power rule (README "Verdicts that state their power"): what the planned validation set can resolve.
MAX_CHANCE_PASS = 0.01   # learnable runs: guessing (accuracy 1/2) may reach the target with at most this probability
MIN_RARER_LABELS = 20    # floor runs: validation rows expected to carry the rarer label (for noisy parity: flipped ones)


def power(args: BitSequenceArgs, n: int | None = None) -> tuple[bool, str, int]:
    """(enough, what the verdict can resolve with n validation rows, the val_size that would do)."""
    from cruijff_kit.summarize import chance_pass_probability, ideal_log_loss_std, rows_for_chance_below

    n = args.val_size if n is None else n
    if args.bit_parity and args.p == 0.0:
        chance = chance_pass_probability(n, LEARNABLE_TARGET_ACCURACY, 0.5)
        need = rows_for_chance_below(LEARNABLE_TARGET_ACCURACY, 0.5, MAX_CHANCE_PASS)
        text = (f"accuracy >= {LEARNABLE_TARGET_ACCURACY} on {n} strings; guessing (1/2) reaches it with "
                f"probability {chance:.2g}")
        return chance <= MAX_CHANCE_PASS, text, need
    rare = min(args.p, 1.0 - args.p)
    need = math.ceil(MIN_RARER_LABELS / rare) if rare > 0 else 1
    share_se = math.sqrt(args.p * (1 - args.p) / max(n, 1))
    band = 2 * ideal_log_loss_std(args.p) / math.sqrt(max(n, 1)) + 0.01
    text = (f"floor H({args.p:g}) = {binary_entropy_nats(args.p):.4f} nats +- {band:.3f} (2 s.e. + 0.01) on {n} rows; "
            f"the validation label {'noise' if args.bit_parity else 'share'} is known to +- {2 * share_se:.3f}; "
            f"about {n * rare:.0f} rows carry the rarer outcome")
    return rare == 0 or n * rare >= MIN_RARER_LABELS, text, need


OPTIONS: list[Option] = [
    ("--bit-length", "bit_length", {"type": int, "metavar": "L", "help": "sequence length in every run (keep 2^L >> val size)"}),
    ("--N", "N", {"type": int, "metavar": "N", "help": "examples per dataset, train + validation"}),
    ("--val-size", "val_size", {"type": int, "metavar": "V", "help": "validation examples per dataset"}),
    ("--p", "p", {"type": float, "metavar": "P", "help": "Bernoulli probability of label 1 in the probabilistic run(s)"}),
    ("--noise", "noise", {"type": float, "metavar": "P", "help": "label-flip probability in the parity run(s) (default 0)"}),
    ("--data-seed", "data_seed", {"type": int, "metavar": "S", "help": "generator seed"}),
]


class BitSequences(Check):
    name = "bit_sequences"
    title = "the bit-sequences sanity check: a parity run (learnable) and a Bernoulli run (loss floor)"
    Args = BitSequenceArgs
    presets = presets.PRESETS
    default_preset = "embedded"
    cluster_preset = "seed"
    purpose = (
        "Check that LoRA fine-tuning learns a deterministic pattern (bit parity: answer loss falls to ~0) "
        "and does not invent one in random labels (Bernoulli: answer loss plateaus at the entropy floor H(p)). "
        "Preset `{preset}`, model {model}."
    )
    prompt_words = (
        "The task is binary classification of bit strings: each dataset is generated from `dataset.generator` "
        "arguments. bit_parity=true: the label is the parity of the bits (learnable), flipped with probability p "
        "(p=0 for clean parity). bit_parity=false: the label is 1 with probability p, independent of the input "
        "(Bernoulli; loss floor H(p)). N counts train + validation examples; keep 2^bit_length much larger than "
        "val_size, because strings in validation are removed from training. Name runs after what they vary "
        "(e.g. parity_L8, bernoulli_p03_L12)."
    )
    describe_example = "compare parity and Bernoulli p=0.3 at bit lengths 8 and 12"
    verdict_rules = (
        "parity runs PASS at validation accuracy >= 0.99 on the strings whose parity can be inferred from "
        "training; Bernoulli(p) runs PASS when the validation loss is within about 2 standard errors of "
        "H(p-hat), p-hat being the validation split's label frequency, and FAIL below it (information leaked); "
        "noisy parity PASSes near accuracy 1-p-hat and loss H(p-hat). Full rules: sanity_checks/bit_sequences/verdict.py."
    )
    field_fixes = {
        "bit_length": "a whole number >= 1 with 2^bit_length well above val_size",
        "N": "a whole number of examples >= 1",
        "val_size": "a whole number between 0 and N",
        "p": "a probability between 0 and 1",
        "bit_parity": "true (parity labels) or false (Bernoulli labels)",
    }
    sweep_variables = ("bit_length", "N", "val_size", "p", "noise", "data_seed")
    convergence_axis = "bit_length"   # shorter strings: a simpler pattern, learned no slower
    floor_axis = "p"                  # the Bernoulli floor H(p) across p
    sweep_overrides = SWEEP_OVERRIDES
    add_run_help = (
        "add a run: NAME:parity|bernoulli:BIT_LENGTH:P[:N[:VAL_SIZE]]. parity labels = parity of the bits, "
        "flipped with probability P; bernoulli labels = 1 with probability P regardless of input. "
        "N and VAL_SIZE default to the preset's. Repeatable. Example: --add-run noisy_parity:parity:8:0.1"
    )

    # ---- design
    def options(self) -> list[Option]:
        return OPTIONS

    def apply_options(self, run_name: str, args: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
        args = dict(args)
        for key in ("bit_length", "N", "val_size"):
            if key in options:
                args[key] = options[key]
        if "data_seed" in options:
            args["seed"] = options["data_seed"]
        if args.get("bit_parity") and "noise" in options:
            args["p"] = options["noise"]
        if args.get("bit_parity") is False and "p" in options:
            args["p"] = options["p"]
        return args

    def sweep_run_name(self, base_run: str, args: BitSequenceArgs, swept: dict[str, Any], seed_index: int | None) -> str:
        """`parity_L6_s2`, `bernoulli_L8_p03_s1`, `noisy_parity_L8_p01`: the kind of labels, then each swept value."""
        kind = ("parity" if args.p == 0 else "noisy_parity") if args.bit_parity else "bernoulli"
        short = {"bit_length": "L", "N": "N", "val_size": "V", "p": "p", "noise": "p", "data_seed": "d"}
        parts = [kind] + [f"{short.get(k, k)}{v:g}".replace(".", "") if isinstance(v, float) else f"{short.get(k, k)}{v}"
                          for k, v in swept.items()]
        if seed_index is not None:
            parts.append(f"s{seed_index}")
        return "_".join(parts)

    def parse_add_run(self, spec: str) -> dict[str, Any]:
        """`NAME:parity|bernoulli:BIT_LENGTH:P[:N[:VAL_SIZE]]` -> {"name", bit_parity, bit_length, p, ...}."""
        parts = spec.split(":")
        fix = "write NAME:parity|bernoulli:BIT_LENGTH:P[:N[:VAL_SIZE]], e.g. noisy_run:parity:8:0.1"
        if not 4 <= len(parts) <= 6:
            raise CkError("--add-run", spec, "needs 4 to 6 fields separated by ':'", fix)
        name, labels, *numbers = parts
        if labels not in LABEL_KINDS:
            raise CkError("--add-run", spec, f"labels {labels!r} must be parity or bernoulli", fix)
        run: dict[str, Any] = {"name": name, "bit_parity": labels == "parity"}
        for key, text, cast in zip(("bit_length", "p", "N", "val_size"), numbers, (int, float, int, int)):
            try:
                run[key] = cast(text)
            except ValueError:
                raise CkError("--add-run", spec, f"{key} {text!r} is not a number", fix) from None
        return run

    def run_defaults(self, preset: str, run_name: Any, given: dict[str, Any]) -> dict[str, Any]:
        """Sizes a run takes from the preset: those of the preset run of the same name, else of the first
        preset run with the same kind of labels, else of the first preset run."""
        runs = self.presets[preset]["runs"]
        chosen = runs.get(run_name) if isinstance(run_name, str) else None
        if chosen is None:
            chosen = next((a for a in runs.values() if a["bit_parity"] == given.get("bit_parity")),
                          next(iter(runs.values())))
        return {k: chosen[k] for k in ("bit_length", "N", "val_size")} | {"seed": chosen.get("seed", 42)}

    def dataset_label(self, args: BitSequenceArgs, preset: str, run_name: str) -> str:
        if preset == "seed" and run_name in SEED_LABELS and args == BitSequenceArgs(**presets.SEED["runs"][run_name]):
            return SEED_LABELS[run_name]
        return dataset_label(args)

    def expected(self, args: BitSequenceArgs) -> Expected:
        return expected_for(args)

    def describe(self, args: BitSequenceArgs) -> dict[str, str]:
        return {"Labels": labels_name(args), "bit_length": str(args.bit_length), "p": f"{args.p:g}",
                "train/val": f"{args.N - args.val_size}/{args.val_size}"}

    def verify(self, args: BitSequenceArgs, hyper) -> list[Finding]:
        dropped = expected_dedup_loss(args)
        train_left = (args.N - args.val_size) * (1.0 - dropped)
        dedup = (f"2^{args.bit_length} = {2 ** args.bit_length} strings vs val_size {args.val_size}: de-duplication "
                 f"drops about {dropped:.0%} of training rows (~{train_left:.0f} left)")
        if train_left < hyper.batch_size:
            return [Finding("fail", dedup, "train and validation share no string, so almost no training data would "
                                           "remain; raise bit_length or lower val_size")]
        findings = []
        if dropped >= 0.25:
            findings.append(Finding("warning", dedup, "keep 2^bit_length >> val_size"))
        else:
            labels = "parity" if args.bit_parity else "bernoulli"
            findings.append(Finding("ok", dedup, f"{labels} labels, {args.N - args.val_size} train / "
                                                 f"{args.val_size} validation rows drawn"))
        enough, resolves, need = power(args)
        if enough:
            findings.append(Finding("ok", f"the verdict resolves {resolves}", "validation set large enough"))
        else:
            findings.append(Finding("warning", f"the verdict can hardly fail: {resolves}",
                                    f"use val_size >= {need} (--val-size {need}); a PASS on this set is "
                                    "reported INCONCLUSIVE"))
        return findings

    def estimate_bytes(self, args: BitSequenceArgs) -> int:
        return args.N * (args.bit_length + 60)

    # ---- scaffold
    def generate(self, args: BitSequenceArgs, path: Path) -> str:
        from sanity_checks.bit_sequences.generator import write_dataset

        result = write_dataset(**args.model_dump(), output=path.name, output_dir=path.parent)
        return f"wrote {path} ({result.counts})"

    def generate_command(self, args: BitSequenceArgs, path: Path) -> str:
        return (f"ck generate bit-sequences {' '.join(f'--{k} {v}' for k, v in args.model_dump().items())} "
                f"--output {path.name} --output_dir {path.parent}")

    def dataset_ready(self, args: BitSequenceArgs, path: Path) -> bool:
        from sanity_checks.bit_sequences.generator import provenance_matches

        try:
            return provenance_matches(path, args.model_dump())
        except CkError:
            return False

    def validate_dataset(self, args: BitSequenceArgs | None, data: Any, path: Path) -> None:
        check_dataset_shape(data, path, labels={"0", "1"})
        if args is None:
            return
        for split in ("train", "validation"):
            for i, row in enumerate(data[split]):
                bits = row["input"]
                if len(bits) != args.bit_length or set(bits) - {"0", "1"}:
                    raise CkError("dataset", f"{path} {split}[{i}]",
                                  f"input {bits!r} is not a string of {args.bit_length} bits",
                                  "regenerate it (delete the file and run ck scaffold)")
        if len(data["validation"]) != args.val_size:
            raise CkError("dataset", str(path), f"validation has {len(data['validation'])} rows, the plan says "
                          f"val_size {args.val_size}", "regenerate it (delete the file and run ck scaffold)")

    # ---- the CLI's `ck generate bit-sequences`
    def configure_generate(self, parser: argparse.ArgumentParser) -> bool:
        from sanity_checks.bit_sequences.cli import add_bit_sequence_flags

        parser.description = ("Write {'train': [...], 'validation': [...]} JSON (same data as the seed's "
                              "sanity_checks/bit_sequences/generate.py for the same flags) plus "
                              "<output>.provenance.json beside it. No string occurs in both splits.")
        parser.epilog = ("example: ck generate bit-sequences --bit_length 15 --N 33000 --p 0 --bit_parity True "
                         "--val_size 4000 --output parity.json")
        add_bit_sequence_flags(parser)
        return True

    def run_generate(self, args: argparse.Namespace) -> int:
        from sanity_checks.bit_sequences.cli import run

        return run(args)

    # ---- summarize
    def judge(self, summary, evidence) -> bool:
        from sanity_checks.bit_sequences.verdict import judge

        return judge(summary, evidence)

    def compare(self, runs) -> list[str]:
        from sanity_checks.bit_sequences.verdict import compare

        return compare(runs)


CHECK = BitSequences()
