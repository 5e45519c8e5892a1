"""The Check interface: everything the core knows about a sanity check (see docs/checks.md).

A check is one object, an instance of a `Check` subclass, found through the entry-point group
`cruijff_kit.checks` (`name = "package.module:OBJECT"`). The core (design, scaffold, run, summarize,
llm_design, the CLI) reaches a check's data, presets, expectations and verdict rules only through it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from importlib.metadata import distributions
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from cruijff_kit.errors import CkError

if TYPE_CHECKING:
    from cruijff_kit.experiment import Expected, Hyper
    from cruijff_kit.experiment_verdicts import ExperimentVerdict, RunFacts
    from cruijff_kit.summarize import Evidence, RunSummary

ENTRY_POINT_GROUP = "cruijff_kit.checks"

# (flag, dest, argparse keyword arguments): one design variable of a check.
Option = tuple[str, str, dict[str, Any]]


@dataclass
class Finding:
    """One result of `Check.verify`: level "ok", "warning" or "fail" (fail: the plan cannot work)."""

    level: str
    result: str
    explanation: str


class Check:
    """Subclass, set the class attributes, override what differs from the defaults, and register an
    instance under the entry-point group `cruijff_kit.checks`. Only `name`, `Args`, `presets`,
    `generate` and `expected` have no default."""

    # ---- identity and plan shape
    name: ClassVar[str]                      # e.g. "bit_sequences"; `ck` also accepts it with - for _
    title: ClassVar[str] = ""                # one line for --help
    Args: ClassVar[type[BaseModel]]          # pydantic model of the generator arguments (plan: dataset.generator)
    presets: ClassVar[dict[str, dict]]       # name -> {"model", "runs": {run: Args dict}, "hyper", "compute"}
    default_preset: ClassVar[str] = "embedded"
    cluster_preset: ClassVar[str | None] = None  # chosen by `ck sanity-check` on SLURM when its model is present
    purpose: ClassVar[str] = ""              # default purpose paragraph; may use {preset} and {model}
    prompt_words: ClassVar[str] = ""         # what the LLM designer is told about the task and the Args
    verdict_rules: ClassVar[str] = ""        # one paragraph for `ck summarize --help` and docs
    field_fixes: ClassVar[dict[str, str]] = {}   # fix text for a bad value of an Args field

    # ---- design
    def options(self) -> list[Option]:
        """Design variables (`ck design NAME --flag`), applied to every run by `apply_options`."""
        return []

    def apply_options(self, run_name: str, args: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
        """One preset run's Args dict with the given (non-None) options applied."""
        return args | {k: v for k, v in options.items() if k in self.Args.model_fields}

    # ---- sweeps: `ck design NAME --flag a,b,c --seeds K` makes the product of the values as runs
    sweep_variables: ClassVar[tuple[str, ...]] = ()   # dests of options() that accept a comma-separated list

    def sweep_run_name(self, base_run: str, args: BaseModel, swept: dict[str, Any], seed_index: int | None) -> str:
        """A readable, stable name for one run of a sweep: the preset run it came from, each swept value
        that applies to it (`swept`: dest -> value), and the seed's 1-based index when seeds are swept."""
        parts = [base_run] + [f"{k}{v}" for k, v in swept.items()]
        if seed_index is not None:
            parts.append(f"s{seed_index}")
        return "_".join(parts).replace(".", "")

    # ---- experiment-level verdicts (cruijff_kit/experiment_verdicts.py)
    convergence_axis: ClassVar[str | None] = None  # Args field: steps-to-target of learnable runs must not fall as it grows
    floor_axis: ClassVar[str | None] = None        # Args field along which the floor runs draw the floor curve
    convergence_tolerance: ClassVar[float] = 0.25  # relative drop in median steps-to-target still counted as "not faster"
    sweep_overrides: ClassVar[dict[str, Any]] = {}  # `ck sanity-check NAME --sweep`: {"preset": ..., dest: [values], "seeds": K}

    add_run_help: ClassVar[str] = ""         # help of `--add-run SPEC`; empty: no --add-run

    def parse_add_run(self, spec: str) -> dict[str, Any]:
        """`--add-run SPEC` -> an extra run: {"name": ..., **partial Args}."""
        raise CkError("--add-run", spec, f"the {self.name} check takes no extra runs", "leave --add-run out")

    def run_defaults(self, preset: str, run_name: Any, given: dict[str, Any]) -> dict[str, Any]:
        """Args that a new run (--add-run, an LLM proposal) takes from the preset when `given` lacks them."""
        runs = self.presets[preset]["runs"]
        chosen = runs.get(run_name) if isinstance(run_name, str) else None
        return dict(chosen if chosen is not None else next(iter(runs.values())))

    def dataset_label(self, args: BaseModel, preset: str, run_name: str) -> str:
        """The dataset's file name (without .json); different Args must give different labels."""
        fields = "_".join(f"{k}{v}" for k, v in args.model_dump().items())
        return f"{self.name}_{fields}".replace(".", "")

    def expected(self, args: BaseModel) -> "Expected":
        """What a healthy run reaches on this data (floor nats, target accuracy, a note)."""
        raise NotImplementedError

    def describe(self, args: BaseModel) -> dict[str, str]:
        """Columns of the runs tables (design output and experiment_summary.md): header -> cell."""
        dump = args.model_dump()
        out = {"data": self.name}
        if "N" in dump and "val_size" in dump:
            out["train/val"] = f"{dump['N'] - dump['val_size']}/{dump['val_size']}"
        return out

    def verify(self, args: BaseModel, hyper: "Hyper") -> list[Finding]:
        """Design-time checks of one run's data plan (sizes that cannot work, warnings)."""
        return []

    def estimate_bytes(self, args: BaseModel) -> int:
        """Rough size of the dataset file, for the disk check."""
        return 0

    # ---- scaffold
    def generate(self, args: BaseModel, path: Path) -> str:
        """Write the dataset `{"train": [...], "validation": [...]}` at `path` atomically; one-line report."""
        raise NotImplementedError

    def generate_command(self, args: BaseModel, path: Path) -> str:
        """The command a person would type to make the same file (for the scaffold log)."""
        return f"(the {self.name} check's generator) {args.model_dump()} -> {path}"

    def dataset_ready(self, args: BaseModel, path: Path) -> bool:
        """True when the file at `path` is this data already (scaffold reuses it, else regenerates)."""
        return False

    def validate_dataset(self, args: BaseModel | None, data: Any, path: Path) -> None:
        """Raise CkError naming the file and the first bad row when `data` (parsed JSON) is not this
        check's data. The default checks the shape every recipe needs (see `check_dataset_shape`)."""
        check_dataset_shape(data, path)

    # ---- the CLI's `ck generate NAME` (optional)
    def configure_generate(self, parser: argparse.ArgumentParser) -> bool:
        """Add the generator's flags; return False when the check has no `ck generate` command."""
        return False

    def run_generate(self, args: argparse.Namespace) -> int:
        raise NotImplementedError

    # ---- summarize
    def judge(self, summary: "RunSummary", evidence: "Evidence") -> bool:
        """Set summary.verdict/reason for a run that trained to its end; False: use the generic rule
        of its `expected.kind` (learnable: accuracy >= target; floor: loss within the margin)."""
        return False

    def compare(self, runs: list[tuple[BaseModel | None, "RunSummary"]]) -> list[str]:
        """Lines about the runs of this check taken together (Results section and verdict table)."""
        return []

    def experiment_checks(self, runs: list["RunFacts"]) -> list["ExperimentVerdict"]:
        """Experiment-level verdicts of the check's own, beside the core's (convergence speed, floor curve,
        train/val tracking; cruijff_kit/experiment_verdicts.py) over its runs that trained to their end."""
        return []


def check_dataset_shape(data: Any, path: Path | str, labels: set[str] | None = None) -> None:
    """`{"train": [...], "validation": [...]}`, rows with string `input` and `output` (in `labels` when
    given), both splits non-empty, no validation input in training."""
    fix = "regenerate it (ck scaffold --force, or delete the file and scaffold again)"
    if not isinstance(data, dict) or not isinstance(data.get("train"), list) or not isinstance(data.get("validation"), list):
        raise CkError("dataset", str(path), "needs top-level `train` and `validation` lists", fix)
    extra = sorted(set(data) - {"train", "validation"})
    if extra:
        raise CkError("dataset", str(path), f"has unknown top-level key {extra[0]!r}", fix)
    for split in ("train", "validation"):
        rows = data[split]
        if not rows:
            raise CkError("dataset", str(path), f"{split} is empty", fix)
        for i, row in enumerate(rows):
            where = f"{split}[{i}]"
            if not isinstance(row, dict) or not isinstance(row.get("input"), str) or not isinstance(row.get("output"), str):
                raise CkError("dataset", f"{path} {where}", "needs string `input` and `output` fields", fix)
            if labels is not None and row["output"] not in labels:
                raise CkError("dataset", f"{path} {where}",
                              f"label {row['output']!r} is not one of {', '.join(sorted(labels))}", fix)
    train_inputs = {row["input"] for row in data["train"]}
    for i, row in enumerate(data["validation"]):
        if row["input"] in train_inputs:
            raise CkError("dataset", f"{path} validation[{i}]",
                          f"input {row['input']!r} also occurs in train (the splits must be disjoint)", fix)


# ---------------------------------------------------------------- registry

_loaded: dict[str, Check] | None = None


def _key(name: str) -> str:
    return name.strip().replace("-", "_")


def registered() -> dict[str, Check]:
    """Every check registered under `cruijff_kit.checks`, by name (loaded once per process)."""
    global _loaded
    if _loaded is None:
        found: dict[str, Check] = {}
        # every distribution's metadata, not only the first of each name: a stale build directory
        # (e.g. an old *.egg-info in the checkout, first on sys.path) must not hide the installed one
        eps = [ep for dist in distributions() for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
        for ep in sorted(eps, key=lambda e: e.name):
            if _key(ep.name) in found:
                continue  # the same distribution seen twice on sys.path
            check = ep.load()
            if isinstance(check, type):
                check = check()
            if not isinstance(check, Check):
                raise CkError(ENTRY_POINT_GROUP, ep.value, "is not a cruijff_kit.checks.Check",
                              "point the entry point at a Check instance (docs/checks.md)")
            found[_key(check.name)] = check
        _loaded = found
    return _loaded


def get_check(name: str, what: str = "check") -> Check:
    """The registered check `name` (- and _ are the same)."""
    checks = registered()
    if not checks:
        raise CkError(what, name, f"no check is registered (entry-point group {ENTRY_POINT_GROUP})",
                      "reinstall cruijff_kit (pip install -e .) so that its built-in check is registered")
    check = checks.get(_key(str(name)))
    if check is None:
        raise CkError(what, name, "unknown sanity check", f"use one of {', '.join(checks)}")
    return check


def check_names() -> list[str]:
    return list(registered())
