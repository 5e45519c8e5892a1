"""Step 2 of the workflow: turn a plan into run directories ready to launch.

For each run of `<exp_dir>/experiment_summary.md`'s plan: make sure its dataset exists (generated
by the run's check, or an existing file the check says is that data already) and is well-formed
for its check (`Check.validate_dataset`: shape, row fields, labels, disjoint splits), build the embedded tiny model if
a run needs it, and write `<exp_dir>/<run>/` with setup_finetune.yaml, finetune.yaml and
finetune.slurm (the last two rendered by tools/torchtune/setup_finetune.py). Each run's output
directory is created up front so that SLURM always has somewhere to write its log.

Idempotent: re-scaffolding an unchanged plan rewrites nothing. When the plan (or a hand edit) makes a
file differ from what is on disk, nothing is written unless `force`; ScaffoldConflict carries the diff.
Every action is logged in scaffold-experiment.log.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cruijff_kit import explog
from cruijff_kit.checks import check_dataset_shape
from cruijff_kit.errors import CkError
from cruijff_kit.experiment import Experiment, RunPlan, find_experiment_dir
from cruijff_kit.fsutil import check_writable_dir
from cruijff_kit.inputs import load_json
from cruijff_kit.markdown_sections import set_section
from cruijff_kit.models.registry import get_model, model_dir_for, resolve_model
from cruijff_kit.models.verify import checkpoint_files_for
from cruijff_kit.settings import load_settings
from cruijff_kit.tools.torchtune.setup_finetune import (SETUP_FILE, RenderResult, render_run,
                                                       settings_environment)

RUN_DIRS_HEADING = "Run directories"
LOG = "scaffold"


class ScaffoldConflict(CkError):
    """Scaffolded files differ from what the plan renders now; `diff` shows how."""

    def __init__(self, exp_dir: Path, diff: str, files: list[Path]):
        self.diff = diff
        self.files = files
        super().__init__("experiment", str(exp_dir),
                         f"{len(files)} scaffolded file(s) differ from what the plan renders now "
                         f"({', '.join(str(f.relative_to(exp_dir)) for f in files)})",
                         "review the diff, then re-run with --force to rewrite them")


@dataclass
class RunScaffold:
    name: str
    run_dir: Path
    output_dir: Path
    dataset: Path
    created: bool                         # the run directory did not exist before
    changed_files: list[str] = field(default_factory=list)


@dataclass
class ScaffoldResult:
    exp_dir: Path
    runs: list[RunScaffold]
    generated: list[Path] = field(default_factory=list)
    reused: list[Path] = field(default_factory=list)
    built_model: Path | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.generated or self.built_model or any(r.created or r.changed_files for r in self.runs))

    @property
    def next_command(self) -> str:
        return f"ck run {self.exp_dir}"

    def summary(self) -> str:
        lines = [f"Scaffolded {self.exp_dir} ({len(self.runs)} run(s)):"]
        width = max(len(r.name) for r in self.runs)
        for run in self.runs:
            state = "created" if run.created else ("updated: " + ", ".join(run.changed_files) if run.changed_files else "unchanged")
            lines.append(f"  {run.name:<{width}}  {state}")
            lines.append(f"  {'':<{width}}  run dir {run.run_dir}")
            lines.append(f"  {'':<{width}}  outputs {run.output_dir}")
        for path in self.generated:
            lines.append(f"  data: generated {path}")
        for path in self.reused:
            lines.append(f"  data: reused {path} (provenance matches the plan)")
        if self.built_model:
            lines.append(f"  model: built {self.built_model}")
        for warning in self.warnings:
            lines.append(f"  warning: {warning}")
        if not self.changed:
            lines.append("  nothing changed: the run directories already match the plan")
        lines.append(f"Next: {self.next_command}")
        return "\n".join(lines)


def setup_for_run(exp: Experiment, run: RunPlan, settings: Any) -> dict[str, Any]:
    """setup_finetune.yaml of one run, in the seed's keys: everything the plan decides, plus the
    environment and SLURM settings in force, so the run directory re-renders the same anywhere."""
    data_file = run.dataset.dataset_path(exp)
    if data_file.suffix != ".json":
        raise CkError(f"{run.name}.dataset.path", str(data_file), "is not a .json file",
                      "give a JSON file with top-level train and validation lists")
    hyper, compute = run.hyper, run.compute
    venv, conda_env = settings_environment(settings)
    # outputs: <output_dir_base>/<experiment_name>/ck-out-<run>, the seed's ck-outputs/<experiment>/ck-out-<run>
    output_root = Path(exp.output_root)
    grouped = output_root.name == exp.name
    setup: dict[str, Any] = {
        "my_wandb_project": exp.wandb_project,
        "my_wandb_run_name": run.name,
        "experiment_name": exp.name if grouped else "",
        "dataset_label": data_file.stem,
        "dataset_ext": data_file.suffix,
        "input_dir_base": str(data_file.parent),
        "input_formatting": "",
        "train_on_input": hyper.train_on_input,
        "system_prompt": hyper.system_prompt,
        "model": run.model,
        "models_dir": exp.models_dir,
        "lora_rank": hyper.lora_rank,
        "epochs": hyper.epochs,
        "batch_size": hyper.batch_size,
        "gradient_accumulation_steps": hyper.gradient_accumulation_steps,
        "max_steps_per_epoch": hyper.max_steps_per_epoch,
        "lr": hyper.lr,
        "lr_scheduler": hyper.lr_scheduler,
        "num_warmup_steps": hyper.num_warmup_steps,
        "seed": hyper.seed,
        "log_every_n_steps": hyper.log_every_n_steps,
        "run_val_every_n_steps": hyper.run_val_every_n_steps,
        "save_adapter_weights_only": True,
        "output_dir_base": str(output_root.parent if grouped else output_root),
        "custom_recipe": compute.recipe,
        "time": compute.time,
        "gpus": compute.gpus,
        "nodes": compute.nodes,
        "device": "cuda" if compute.gpus > 0 else "cpu",  # a model whose registry device is cuda, run on CPU
        "cpus": compute.cpus,
        "mem": compute.mem,
        "account": settings.slurm_account,
        "partition": settings.slurm_partition,
        "constraint": settings.slurm_constraint,
        "qos": settings.slurm_qos,
        "venv": venv,
        "conda_env": conda_env,
        "modules": list(settings.modules),
    }
    if compute.procs_per_node is not None:
        setup["procs_per_node"] = compute.procs_per_node
    if hyper.early_stop_after is not None and run.expected.kind == "learnable":  # floor runs train to the end
        setup["early_stop_after"] = hyper.early_stop_after
        setup["early_stop_accuracy"] = run.expected.target_accuracy or 0.99
    if hyper.batch_size_val is not None:
        setup["batch_size_val"] = hyper.batch_size_val
    return setup


def _log(exp_dir: Path, action: str, description: str, command: str, result: str, explanation: str) -> None:
    explog.append_entry(exp_dir, LOG, action, description, command=command, result=result, explanation=explanation)


def validate_dataset(run: RunPlan, path: Path) -> None:
    """The dataset file is JSON of the shape its check describes (CkError naming the first bad row)."""
    data = load_json(path, f"{run.name}.dataset", "regenerate it (delete the file and run ck scaffold)")
    check = run.dataset.check_obj()
    if check is None:
        check_dataset_shape(data, path)
    else:
        check.validate_dataset(run.dataset.args(), data, path)


def _model_ready(models_dir: Path, name: str) -> bool:
    spec, model_dir = resolve_model(name), model_dir_for(name, models_dir)
    return (all((model_dir / f).is_file() for f in checkpoint_files_for(model_dir, spec))
            and (model_dir / spec.tokenizer_file).is_file())


def scaffold_experiment(exp_dir: str | os.PathLike, *, force: bool = False, settings: Any = None,
                        command: str | None = None, progress: bool = True) -> ScaffoldResult:
    """Create or update every run directory of the plan in `exp_dir` (a path, or an experiment name
    under the scratch); see the module docstring."""
    settings = settings if settings is not None else load_settings()
    exp_dir = find_experiment_dir(exp_dir, settings)
    exp = Experiment.load(exp_dir)
    command = command or f"ck scaffold {exp_dir}" + (" --force" if force else "")
    if Path(exp.experiment_dir).resolve() != exp_dir:
        raise CkError("experiment_dir", exp.experiment_dir, f"the plan names another directory than {exp_dir}",
                      "run ck scaffold on the directory the plan names, or fix experiment_dir in the ## Plan block")

    check_writable_dir(exp_dir, "experiment_dir", "make the experiment directory writable (chmod u+w)")
    with open(exp_dir / ".scaffold.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _scaffold_locked(exp, exp_dir, force, settings, command, progress)


def _scaffold_locked(exp: Experiment, exp_dir: Path, force: bool, settings: Any, command: str,
                     progress: bool) -> ScaffoldResult:
    # 1. Decide everything before writing anything: a refusal must leave the directory untouched.
    renders: dict[str, RenderResult] = {}
    for run in exp.runs:
        result = render_run(setup_for_run(exp, run, settings), exp_dir / run.name, settings=settings, write=False)
        expected = exp.run_output_dir(run.name)
        if result.output_dir != expected:
            raise AssertionError(f"renderer output_dir {result.output_dir} != plan's {expected}")
        renders[run.name] = result

    conflicts = [r.run_dir / name for r in renders.values() for name in r.changed if (r.run_dir / name).exists()]
    if conflicts and not force:
        diff = "".join(r.diff() for r in renders.values() if any((r.run_dir / n).exists() for n in r.changed))
        _log(exp_dir, "REFUSE_CHANGES", f"{len(conflicts)} scaffolded file(s) differ from the plan", command,
             "nothing written", "the plan or a file changed since the last scaffold; re-run with --force to rewrite")
        raise ScaffoldConflict(exp_dir, diff, conflicts)

    try:
        _check_destinations(exp, renders)
    except CkError as exc:
        _log_failure(exp_dir, "REFUSE_DESTINATION", "nothing written", command, exc)
        raise
    undo = _Undo()
    try:
        return _write_all(exp, exp_dir, renders, settings, command, progress, undo)
    except BaseException as exc:
        undo.restore()
        if not isinstance(exc, Exception):
            raise
        _log_failure(exp_dir, "SCAFFOLD_FAILED", "every file put back as it was", command, exc)
        raise


def _log_failure(exp_dir: Path, action: str, result: str, command: str, exc: BaseException) -> None:
    try:
        _log(exp_dir, action, "scaffold stopped", command, result, " ".join(str(exc).split()) or type(exc).__name__)
    except OSError:
        pass  # the log itself cannot be written: the error the user sees says why


def _check_destinations(exp: Experiment, renders: dict[str, RenderResult]) -> None:
    """Every directory scaffold may write, checked before the first write."""
    for run in exp.runs:
        check_writable_dir(renders[run.name].output_dir, f"{run.name} output directory (output_root)",
                           "set output_root in the plan, or `ck config set scratch DIR`, to a writable directory")
        data_dir = run.dataset.dataset_path(exp).parent
        if run.dataset.args() is not None:
            check_writable_dir(data_dir, f"{run.name}.dataset (data_dir)",
                               "`ck config set data_dir DIR` to a writable directory and re-run ck design")
        if resolve_model(run.model).embedded and not _model_ready(Path(exp.models_dir), run.model):
            check_writable_dir(exp.models_dir, "models_dir",
                               "`ck config set models_dir DIR` to a writable directory and re-run ck design")


class _Undo:
    """What a failed scaffold must put back: paths it created, files it overwrote."""

    def __init__(self) -> None:
        self.created: list[Path] = []
        self.saved: dict[Path, bytes] = {}

    def mkdir(self, path: Path) -> None:
        top = path
        while not top.parent.exists():
            top = top.parent
        if not path.exists():
            self.created.append(top)
        path.mkdir(parents=True, exist_ok=True)

    def save(self, *paths: Path) -> None:
        for path in paths:
            if path.is_file() and path not in self.saved:
                self.saved[path] = path.read_bytes()
            elif not path.exists():
                self.created.append(path)

    def restore(self) -> None:
        import shutil

        for path in reversed(self.created):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        for path, data in self.saved.items():
            try:
                path.write_bytes(data)
            except OSError:
                pass


def _write_all(exp: Experiment, exp_dir: Path, renders: dict[str, RenderResult], settings: Any, command: str,
               progress: bool, undo: _Undo) -> ScaffoldResult:
    out = ScaffoldResult(exp_dir, [])

    # 2. Datasets: one per distinct file, generated only when no file with matching provenance exists.
    datasets: dict[Path, RunPlan] = {}
    for run in exp.runs:
        datasets.setdefault(run.dataset.dataset_path(exp), run)
    to_generate = []
    for path, run in datasets.items():
        args = run.dataset.args()
        if args is None:
            if not path.is_file():
                raise CkError(f"{run.name}.dataset.path", str(path), "is a directory" if path.is_dir() else "does not exist",
                              "create the file, or plan a generated dataset with ck design")
            validate_dataset(run, path)
            continue
        check = run.dataset.check_obj()
        if check.dataset_ready(args, path):
            validate_dataset(run, path)
            out.reused.append(path)
            _log(exp_dir, "REUSE_DATA", f"dataset {path.name}", f"{check.name}: dataset_ready({path})",
                 "reused", f"it is the data of the plan's generator arguments {args.model_dump()}")
        else:
            to_generate.append((path, run))
    if to_generate:
        from tqdm import tqdm

        for path, run in tqdm(to_generate, desc="generating datasets", unit="dataset", disable=not progress, file=sys.stderr):
            args, check = run.dataset.args(), run.dataset.check_obj()
            why = "no file there yet" if not path.exists() else "the existing file's provenance does not match the plan"
            undo.save(path, path.with_name(path.name + ".provenance.json"))
            report = check.generate(args, path)
            validate_dataset(run, path)
            out.generated.append(path)
            _log(exp_dir, "GENERATE_DATA", f"dataset {path.name}", check.generate_command(args, path), report, why)

    # 3. Models: build the embedded one when a run needs it; only warn about others (they are downloaded by hand).
    models_dir = Path(exp.models_dir)
    for name in dict.fromkeys(run.model for run in exp.runs):
        if _model_ready(models_dir, name):
            continue
        if not os.path.isabs(name) and get_model(name).embedded:
            from cruijff_kit.models.tiny import build_tiny_model

            undo.mkdir(models_dir)
            undo.save(models_dir / name)
            out.built_model = build_tiny_model(models_dir)
            _log(exp_dir, "BUILD_MODEL", f"model {name}", f"ck models tiny --models-dir {models_dir}",
                 f"built {out.built_model}", "a run uses the embedded model and it was not built yet")
        else:
            out.warnings.append(f"model {name} is not at {model_dir_for(name, models_dir)}: download it there before `ck run`")

    # 4. Run directories, their files and their output directories.
    for run in exp.runs:
        render = renders[run.name]
        created = not render.run_dir.exists()
        undo.mkdir(render.run_dir)
        undo.save(*(render.run_dir / name for name in render.changed))
        if created:
            _log(exp_dir, "CREATE_RUN_DIR", f"run {run.name}", f"mkdir -p {render.run_dir}",
                 f"created {render.run_dir}", "one directory per run holds its configs")
        changed = render.write()
        if changed:
            _log(exp_dir, "RENDER_CONFIG", f"run {run.name}",
                 f"cd {render.run_dir} && python -m cruijff_kit.tools.torchtune.setup_finetune",
                 f"wrote {', '.join(changed)}",
                 f"{SETUP_FILE} from the plan; finetune.yaml and finetune.slurm rendered from it; outputs go to {render.output_dir}")
        undo.mkdir(render.output_dir)
        out.runs.append(RunScaffold(run.name, render.run_dir, render.output_dir, run.dataset.dataset_path(exp), created, changed))

    planned = {run.name for run in exp.runs}
    for child in sorted(exp_dir.iterdir()):
        if child.is_dir() and (child / SETUP_FILE).is_file() and child.name not in planned:
            out.warnings.append(f"{child} is not a run of the plan any more (left in place)")

    undo.save(exp.summary_path())
    set_section(exp.summary_path(), RUN_DIRS_HEADING, _run_dirs_section(out))
    if out.changed:
        _log(exp_dir, "SCAFFOLD_COMPLETE", f"{len(out.runs)} run(s) ready", command,
             f"{sum(r.created for r in out.runs)} created, {sum(bool(r.changed_files) and not r.created for r in out.runs)} updated, "
             f"{len(out.generated)} dataset(s) generated, {len(out.reused)} reused",
             f"next: {out.next_command}")
    else:
        _log(exp_dir, "SCAFFOLD_UNCHANGED", "nothing changed", command, "no file written",
             "every run directory, dataset and model already matches the plan")
    return out


def _run_dirs_section(out: ScaffoldResult) -> str:
    lines = ["| run | run directory | output directory | dataset |", "|---|---|---|---|"]
    for run in out.runs:
        lines.append(f"| {run.name} | `{run.run_dir}` | `{run.output_dir}` | `{run.dataset}` |")
    lines += ["", f"Each run directory holds setup_finetune.yaml, finetune.yaml and finetune.slurm. Next: `{out.next_command}`."]
    return "\n".join(lines)
