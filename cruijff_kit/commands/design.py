"""`ck design CHECK`: plan an experiment and write experiment_summary.md + design-experiment.log.

Targets are subcommands, one per registered sanity check (cruijff_kit.checks; `-` and `_` both
accepted); each designs its check from a preset, with the check's own variables as flags.
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
    ("--model", "model", {"metavar": "NAME", "help": "ck-tiny-llama, Llama-3.2-1B-Instruct, a directory under models_dir, or a model directory's absolute path (any folder name: config.json picks the architecture)"}),
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
    ("--early-stop-after", "early_stop_after", {"type": int, "metavar": "K", "help": "learnable runs end once the "
     "held-out target held for K validations in a row (floor runs train to the end)"}),
    ("--gpus", "gpus", {"type": int, "metavar": "G", "help": "GPUs per node (0 = CPU); > 1 trains with the distributed recipe"}),
    ("--nodes", "nodes", {"type": int, "metavar": "M", "help": "nodes per run (default 1); > 1 trains with the "
                                                               "distributed recipe, one torchrun per node"}),
    ("--procs-per-node", "procs_per_node", {"type": int, "metavar": "P",
                                            "help": "training processes per node (default: gpus, 1 on CPU); on CPU, "
                                                    "several gloo processes without GPUs"}),
    ("--custom-recipe", "custom_recipe", {"metavar": "RECIPE", "help": "recipe to train with (default: chosen "
                                                                         "from the layout, single-device or distributed)"}),
    ("--time", "time", {"metavar": "HH:MM:SS", "help": "time limit per run"}),
    ("--mem", "mem", {"metavar": "SIZE", "help": "memory per run, e.g. 32G"}),
    ("--cpus", "cpus", {"type": int, "metavar": "C", "help": "CPUs per run"}),
    ("--purpose", "purpose", {"metavar": "TEXT", "help": "one paragraph: what this experiment should show"}),
]

def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Plan an experiment: choose runs, verify the model, datasets and disk, then write "
        "<scratch>/ck-sanity-checks/<name>/experiment_summary.md (human text + the ```yaml plan every "
        "step reads) and design-experiment.log. Next step: ck scaffold <experiment dir>."
    )
    from cruijff_kit.llm_design import add_describe_arguments

    add_describe_arguments(parser)
    targets = parser.add_subparsers(dest="target", metavar="CHECK")
    from cruijff_kit.checks import registered

    for check in registered().values():
        _add_check_parser(targets, check)


def presets_text(check) -> str:
    """Every preset's model and runs, with the sizes the check reports for them (`Check.describe`)."""
    lines = ["presets:"]
    for name, preset in check.presets.items():
        hyper = preset["hyper"]
        lines.append(f"  {name}: model {preset['model']}, {hyper['epochs']} epochs, batch {hyper['batch_size']}, "
                     f"{preset['compute']['gpus']} GPU(s)")
        for run_name, args in preset["runs"].items():
            cells = ", ".join(f"{k} {v}" for k, v in check.describe(check.Args(**args)).items())
            lines.append(f"    {run_name}: {cells}")
    return "\n".join(lines)


def _add_check_parser(targets, check) -> None:
    dashed = check.name.replace("_", "-")
    presets = list(check.presets)
    sub = targets.add_parser(
        dashed, aliases=[check.name] if dashed != check.name else [],
        help=check.title or f"the {check.name} sanity check",
        description=textwrap.fill(
            f"Design the {check.name} sanity check from a preset ({', '.join(presets)}; default "
            f"{check.default_preset}). {check.title}. Variable flags below change every run"
            + ("; --add-run adds runs" if check.add_run_help else "") + ". Asks for confirmation on a terminal unless --yes.", 88),
        epilog=presets_text(check) + "\n\nexamples:\n"
        f"  ck design {dashed} --preset {check.default_preset} --yes\n"
        f"  ck design {dashed} --name my_check --scratch /scratch/gpfs/$USER --yes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_argument("--preset", choices=presets, default=check.default_preset,
                     help=f"starting sizes (default {check.default_preset})")
    sub.add_argument("--name", help=f"experiment name (default sanity_check_{check.name}_YYYY-MM-DD)")
    sub.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    sub.add_argument("--force", action="store_true",
                     help="replace an existing plan of the same name (its Jobs and Results sections are kept), "
                          "or plan into a non-empty directory that holds no experiment")
    where = sub.add_argument_group("where things go (override settings; see `ck config show`)")
    for flag, dest, kw in SETTING_FLAGS:
        where.add_argument(flag, dest=dest, **kw)
    variables = sub.add_argument_group(
        "variables (applied to every run; " + (
            f"{', '.join(f for f, d, _ in check.options() if d in check.sweep_variables)} take a comma-separated "
            "list: the product of the lists becomes the runs, a sweep" if check.sweep_variables else "one value each") + ")")
    for flag, dest, kw in check.options() + VARIABLE_FLAGS:
        if dest in check.sweep_variables:
            kw = dict(kw, type=_list_or_one(kw.get("type", str), flag), metavar=f"{kw.get('metavar', 'X')}[,...]")
        variables.add_argument(flag, dest=dest, **kw)
    variables.add_argument("--seeds", dest="seeds", type=int, metavar="K",
                           help="sweep K training seeds (seed, seed+1, ...) for every run; names end in _s1.._sK")
    if check.add_run_help:
        variables.add_argument("--add-run", dest="add_run", action="append", default=[], metavar="SPEC",
                               help=check.add_run_help)
    sub.set_defaults(check=check.name)


def _list_or_one(cast, flag: str):
    """argparse type: `4` -> 4, `4,6,8` -> [4, 6, 8] (a sweep)."""
    def parse(text: str):
        items = [t.strip() for t in text.split(",")]
        try:
            values = [cast(t) for t in items]
        except ValueError:
            kind = {"int": "a whole number", "float": "a number"}.get(getattr(cast, "__name__", ""), "a value")
            raise argparse.ArgumentTypeError(f"{text!r}: each value must be {kind}; "
                                             f"fix: e.g. {flag} 4,6,8") from None
        return values if len(values) > 1 else values[0]
    parse.__name__ = getattr(cast, "__name__", "value")
    return parse


def _word(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def command_line(args: argparse.Namespace) -> str:
    from cruijff_kit.checks import get_check

    words = ["ck", "design", args.target, "--preset", args.preset]
    if args.name:
        words += ["--name", args.name]
    for flag, dest, _ in SETTING_FLAGS + get_check(args.check).options() + VARIABLE_FLAGS:
        value = getattr(args, dest, None)
        if value is not None:
            words += [flag, _word(value)]
    if getattr(args, "seeds", None) is not None:
        words += ["--seeds", str(args.seeds)]
    for spec in getattr(args, "add_run", []):
        words += ["--add-run", spec]
    words += [f for f, on in (("--yes", args.yes), ("--force", args.force)) if on]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "describe", None) is not None:
        from cruijff_kit.llm_design import run_describe

        return run_describe(args)
    if not getattr(args, "target", None):
        from cruijff_kit.checks import check_names

        print(f"ck design: choose a check ({', '.join(n.replace('_', '-') for n in check_names())}), e.g. `ck design CHECK --yes` "
              "(`ck design CHECK --help` lists its flags)", file=sys.stderr)
        return 2
    from cruijff_kit.checks import get_check
    from cruijff_kit.design import design_check, plan_size_text, runs_table, written_message
    from cruijff_kit.experiment import Experiment
    from cruijff_kit.settings import load_settings

    check = get_check(args.check)
    settings = load_settings({dest: getattr(args, dest) for _, dest, _ in SETTING_FLAGS})
    overrides = {dest: getattr(args, dest) for _, dest, _ in check.options() + VARIABLE_FLAGS}
    overrides["seeds"] = args.seeds
    if overrides["train_on_input"] is not None:
        overrides["train_on_input"] = overrides["train_on_input"] == "true"
    if args.name is not None and not args.name.strip():
        raise CkError("--name", args.name, "empty name", "omit --name for the dated default")
    exp_dir = design_check(
        check, args.preset, settings=settings, name=args.name,
        extra_runs=[check.parse_add_run(s) for s in getattr(args, "add_run", [])],
        overrides=overrides, yes=args.yes, interactive=not args.yes, command_line=command_line(args),
        force=args.force,
    )
    exp = Experiment.load(exp_dir)
    print(runs_table(exp))
    print(plan_size_text(exp, settings)[0])
    print("\n" + written_message(exp_dir))
    return 0
