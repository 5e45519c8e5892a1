"""`ck design TARGET`: plan an experiment and write experiment_summary.md + design-experiment.log.

Targets are subcommands; `bit-sequences` designs the bit-sequences sanity check from a preset.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import textwrap

from cruijff_kit.errors import CkError

# (flag, dest, argparse kwargs) for every design variable; reused to rebuild the command line for the log.
SETTING_FLAGS = [
    ("--scratch", "scratch", {"metavar": "DIR", "help": "scratch root (setting scratch; default ./ck-scratch)"}),
    ("--models-dir", "models_dir", {"metavar": "DIR", "help": "model directories (setting models_dir; default <scratch>/models)"}),
    ("--data-dir", "data_dir", {"metavar": "DIR", "help": "where datasets are generated (setting data_dir)"}),
    ("--wandb-project", "wandb_project", {"metavar": "NAME", "help": "W&B project (default bit_sequences_YYYY-MM-DD)"}),
]
VARIABLE_FLAGS = [
    ("--bit-length", "bit_length", {"type": int, "metavar": "L", "help": "sequence length in every run (keep 2^L >> val size)"}),
    ("--N", "N", {"type": int, "metavar": "N", "help": "examples per dataset, train + validation"}),
    ("--val-size", "val_size", {"type": int, "metavar": "V", "help": "validation examples per dataset"}),
    ("--p", "p", {"type": float, "metavar": "P", "help": "Bernoulli probability of label 1 in the probabilistic run(s)"}),
    ("--noise", "noise", {"type": float, "metavar": "P", "help": "label-flip probability in the parity run(s) (default 0)"}),
    ("--data-seed", "data_seed", {"type": int, "metavar": "S", "help": "generator seed"}),
    ("--model", "model", {"metavar": "NAME", "help": "ck-tiny-llama, Llama-3.2-1B-Instruct, or a directory under models_dir"}),
    ("--epochs", "epochs", {"type": int, "metavar": "E", "help": "training epochs"}),
    ("--batch-size", "batch_size", {"type": int, "metavar": "B"}),
    ("--lora-rank", "lora_rank", {"type": int, "metavar": "R", "help": "LoRA rank (alpha is always 2 x rank)"}),
    ("--lr", "lr", {"type": float, "metavar": "LR", "help": "peak learning rate"}),
    ("--num-warmup-steps", "num_warmup_steps", {"type": int, "metavar": "S"}),
    ("--log-every-n-steps", "log_every_n_steps", {"type": int, "metavar": "S"}),
    ("--run-val-every-n-steps", "run_val_every_n_steps", {"type": int, "metavar": "S"}),
    ("--max-steps-per-epoch", "max_steps_per_epoch", {"type": int, "metavar": "S"}),
    ("--gradient-accumulation-steps", "gradient_accumulation_steps", {"type": int, "metavar": "K"}),
    ("--batch-size-val", "batch_size_val", {"type": int, "metavar": "B"}),
    ("--train-on-input", "train_on_input", {"choices": ["true", "false"], "help": "learn from input tokens too (default true)"}),
    ("--system-prompt", "system_prompt", {"metavar": "TEXT"}),
    ("--seed", "seed", {"type": int, "metavar": "S", "help": "training seed"}),
    ("--gpus", "gpus", {"type": int, "metavar": "G", "help": "GPUs per run (0 = CPU)"}),
    ("--time", "time", {"metavar": "HH:MM:SS", "help": "time limit per run"}),
    ("--mem", "mem", {"metavar": "SIZE", "help": "memory per run, e.g. 32G"}),
    ("--cpus", "cpus", {"type": int, "metavar": "C", "help": "CPUs per run"}),
    ("--purpose", "purpose", {"metavar": "TEXT", "help": "one paragraph: what this experiment should show"}),
]

ADD_RUN_HELP = (
    "add a run: NAME:parity|bernoulli:BIT_LENGTH:P[:N[:VAL_SIZE]]. parity labels = parity of the bits, "
    "flipped with probability P; bernoulli labels = 1 with probability P regardless of input. "
    "N and VAL_SIZE default to the preset's. Repeatable. Example: --add-run noisy_parity:parity:8:0.1"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Plan an experiment: choose runs, verify the model, datasets and disk, then write "
        "<scratch>/ck-sanity-checks/<name>/experiment_summary.md (human text + the ```yaml plan every "
        "step reads) and design-experiment.log. Next step: ck scaffold <experiment dir>."
    )
    from cruijff_kit.llm_design import add_describe_arguments

    add_describe_arguments(parser)
    targets = parser.add_subparsers(dest="target", metavar="TARGET")
    bits = targets.add_parser(
        "bit-sequences",
        help="the bit-sequences sanity check: a parity run (learnable) and a Bernoulli run (loss floor)",
        description=textwrap.fill(
            "Design the bit-sequences sanity check from a preset. `seed` reproduces the original "
            "(Llama-3.2-1B-Instruct, 15 bits, 33000 examples, 10 epochs, 1 GPU per run); `embedded` uses the "
            "tiny built-in model on CPU. A parity run (learnable: answer loss -> 0) and a Bernoulli(0.5) run "
            "(loss floor ln 2) by default. Variable flags below change every run; --add-run adds runs. "
            "Asks for confirmation on a terminal unless --yes.", 88),
        epilog="examples:\n"
        "  ck design bit-sequences --preset embedded --yes\n"
        "  ck design bit-sequences --preset seed --scratch /scratch/gpfs/$USER --yes\n"
        "  ck design bit-sequences --bit-length 12 --p 0.3 --add-run noisy:parity:12:0.1 --name noise_study --yes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bits.add_argument("--preset", choices=["seed", "embedded"], default="embedded",
                      help="starting sizes (default embedded)")
    bits.add_argument("--name", help="experiment name (default sanity_check_bit_sequences_YYYY-MM-DD)")
    bits.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    bits.add_argument("--force", action="store_true",
                      help="replace an existing plan of the same name (its Jobs and Results sections are kept)")
    where = bits.add_argument_group("where things go (override settings; see `ck config show`)")
    for flag, dest, kw in SETTING_FLAGS:
        where.add_argument(flag, dest=dest, **kw)
    variables = bits.add_argument_group("variables (applied to every run)")
    for flag, dest, kw in VARIABLE_FLAGS:
        variables.add_argument(flag, dest=dest, **kw)
    variables.add_argument("--add-run", dest="add_run", action="append", default=[], metavar="SPEC", help=ADD_RUN_HELP)


def command_line(args: argparse.Namespace) -> str:
    words = ["ck", "design", args.target, "--preset", args.preset]
    if args.name:
        words += ["--name", args.name]
    for flag, dest, _ in SETTING_FLAGS + VARIABLE_FLAGS:
        value = getattr(args, dest, None)
        if value is not None:
            words += [flag, str(value)]
    for spec in args.add_run:
        words += ["--add-run", spec]
    words += [f for f, on in (("--yes", args.yes), ("--force", args.force)) if on]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "describe", None) is not None:
        from cruijff_kit.llm_design import run_describe

        return run_describe(args)
    if args.target != "bit-sequences":
        print("ck design: choose a target, e.g. `ck design bit-sequences --preset embedded --yes` "
              "(`ck design bit-sequences --help` lists the flags)", file=sys.stderr)
        return 2
    from cruijff_kit.design import design_bit_sequences, parse_add_run, runs_table, written_message
    from cruijff_kit.experiment import Experiment
    from cruijff_kit.settings import load_settings

    settings = load_settings({dest: getattr(args, dest) for _, dest, _ in SETTING_FLAGS})
    overrides = {dest: getattr(args, dest) for _, dest, _ in VARIABLE_FLAGS}
    if overrides["train_on_input"] is not None:
        overrides["train_on_input"] = overrides["train_on_input"] == "true"
    if args.name is not None and not args.name.strip():
        raise CkError("--name", args.name, "empty name", "omit --name for the dated default")
    exp_dir = design_bit_sequences(
        args.preset, settings=settings, name=args.name, extra_runs=[parse_add_run(s) for s in args.add_run],
        overrides=overrides, yes=args.yes, interactive=not args.yes, command_line=command_line(args),
        force=args.force,
    )
    print(runs_table(Experiment.load(exp_dir)))
    print("\n" + written_message(exp_dir))
    return 0
