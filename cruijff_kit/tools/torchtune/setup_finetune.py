"""Render a run directory's finetune.yaml and finetune.slurm from its setup_finetune.yaml.

Library:

    result = render_run({"dataset_label": "my_data", "epochs": 3, ...}, run_dir)   # or a yaml path / None
    result.output_dir, result.files["finetune.slurm"], result.changed

Command line, from a run directory (the seed README's `python ../../tools/torchtune/setup_finetune.py`):

    python -m cruijff_kit.tools.torchtune.setup_finetune [--KEY VALUE ...]
    python /path/to/cruijff_kit/tools/torchtune/setup_finetune.py [--KEY VALUE ...]

Every key, its type, bounds, default and meaning is defined once, in the run contract
(cruijff_kit/run_config.py, `RunConfig`); this module reads it, renders the two files from the
validated config with the jinja templates beside it, and writes them. Each key is a `--KEY VALUE`
flag and a setup_finetune.yaml key: flags > setup_finetune.yaml (or --config_file) > defaults;
with no setup file, flags and defaults alone render. Outputs go to
<output_dir_base>/<experiment_name>/ck-out-<my_wandb_run_name> (no experiment_name: no grouping).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib.util
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

if __package__ in (None, ""):  # run by path: make the checkout importable without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import jinja2
import yaml

from cruijff_kit import run_config
from cruijff_kit.errors import CkError
from cruijff_kit.fsutil import atomic_write_text, check_writable_dir
from cruijff_kit.inputs import load_yaml_mapping, read_text
from cruijff_kit.models.verify import checkpoint_files_for
from cruijff_kit.run_config import (DEFAULT_RECIPE, SETUP_FILE, RunConfig, model_spec, output_dir, resolve,
                                    settings_environment, validate_given)

FINETUNE_YAML = "finetune.yaml"
FINETUNE_SLURM = "finetune.slurm"
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
PACKAGE_DIR = Path(__file__).resolve().parents[2]  # .../cruijff_kit
COMMAND = "python -m cruijff_kit.tools.torchtune.setup_finetune"
__all__ = ["DEFAULT_RECIPE", "SETUP_FILE", "RenderResult", "render_run", "settings_environment", "main"]


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _escape_interpolation(text: str) -> str:
    """OmegaConf (which torchtune loads configs with) would resolve `${...}` in a value: escape it."""
    return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)


def yaml_value(value: Any) -> str:
    """One YAML value in flow style, for pasting after `key: ` in a template line."""
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        value = _escape_interpolation(value)
    style = '"' if isinstance(value, str) and not value.isprintable() else None
    text = yaml.safe_dump(value, default_flow_style=True, default_style=style, width=float("inf"),
                          allow_unicode=True, sort_keys=False).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")].rstrip()
    if "\n" in text:  # cannot happen with width=inf and double quotes; guard the template anyway
        raise AssertionError(f"multi-line YAML value {text!r}")
    return text


def sbatch_value(value: Any, key: str) -> str:
    """A value for an `#SBATCH --opt=VALUE` line.

    sbatch splits those lines at whitespace, strips quotes, treats backslash as an escape and `#`
    as a comment. A value with whitespace, quotes or `#` is double-quoted (inner `"` escaped);
    control characters and backslashes (which also switch off %j in file names) are refused.
    """
    text = str(value)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text) or "\\" in text:
        raise CkError(key, value, "cannot go on an #SBATCH line (line break, control character or backslash)",
                      "rename it without those characters")
    if re.search(r"[\s\"'#]", text):
        return '"' + text.replace('"', '\\"') + '"'
    return text


def job_name(run_name: str) -> str:
    """SLURM job names are labels: keep them to characters every tool prints cleanly."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", run_name)[:200] or "finetune"


def resolve_recipe(name: str) -> str:
    """The recipe's .py file (a dotted module or a path), or the name of a torchtune built-in recipe."""
    if name.endswith(".py") or "/" in name:
        path = Path(name).expanduser()
        if not path.is_file():
            raise CkError("custom_recipe", name, "no such recipe file", "give an existing .py file or a dotted module")
        return str(path.resolve())
    if "." not in name:
        return name  # a torchtune built-in recipe, e.g. lora_finetune_single_device
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin and spec.origin.endswith(".py"):
        return str(Path(spec.origin).resolve())
    if name.startswith("cruijff_kit."):
        # our own recipe, not importable right now (e.g. not installed yet): its place in the package
        return str(PACKAGE_DIR.joinpath(*name.split(".")[1:]).with_suffix(".py"))
    raise CkError("custom_recipe", name, "module not found", f"use {DEFAULT_RECIPE} or a path to a recipe .py file")


def recipe_invocation(name: str) -> tuple[str | None, str]:
    """(directory to run `tune run` in, its recipe argument).

    torchtune 0.6.1 turns a custom recipe path into a module name relative to the current directory
    (a/b.py -> a.b) and runs that module, so an absolute path cannot work: run it from the recipe's
    import root (the directory above its top-level package) with the path relative to it.
    """
    recipe = resolve_recipe(name)
    if not recipe.endswith(".py"):
        return None, recipe
    path = Path(recipe)
    root = path.parent
    while (root / "__init__.py").is_file():
        root = root.parent
    return str(root), str(path.relative_to(root))


def run_paths(config: RunConfig) -> dict[str, Any]:
    spec = model_spec(config.model)
    model_dir = Path(config.model) if os.path.isabs(config.model) else Path(config.models_dir) / spec.name
    input_dir = Path(config.input_dir_base)
    if config.input_formatting:
        input_dir = input_dir / config.input_formatting
    return {
        "output_dir": output_dir(config),
        "input_dir": input_dir,
        "data_file": input_dir / f"{config.dataset_label}{config.dataset_ext}",
        "model_dir": model_dir,
        "checkpoint_files": checkpoint_files_for(model_dir, spec),  # one file, or the shards its index names
        "tokenizer": model_dir / spec.tokenizer_file,
        "special_tokens": model_dir / spec.special_tokens_file if spec.special_tokens_file else None,
    }


@functools.lru_cache(maxsize=None)
def _jinja() -> jinja2.Environment:
    """One environment per process, so each template is compiled once, not once per run rendered."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    env.filters["y"] = yaml_value
    env.filters["q"] = lambda value: shlex.quote(str(value))
    return env


def render_finetune_yaml(config: RunConfig) -> str:
    paths = run_paths(config)
    text = _jinja().get_template("finetune.yaml.j2").render(
        v=config, spec=model_spec(config.model), paths=paths, epochs_to_save=config.saved_epochs(),
        lora_alpha=2 * config.lora_rank, fused=config.device == "cuda",
        lr_scheduler=f"torchtune.training.lr_schedulers.{config.lr_scheduler}",
        dataset_component=f"torchtune.datasets.{config.dataset_type}",
        system_prompt=config.system_prompt or None, command=COMMAND,
    )
    _check_yaml(text, config, paths)
    return text


def _check_yaml(text: str, config: RunConfig, paths: Mapping[str, Any]) -> None:
    """The rendered file must read back to what was meant (guards the template, not the user)."""
    loaded = yaml.safe_load(text)
    expected = {
        ("output_dir",): _escape_interpolation(str(paths["output_dir"])),
        ("dataset", "data_files"): _escape_interpolation(str(paths["data_file"])),
        ("metric_logger", "name"): _escape_interpolation(config.my_wandb_run_name),
        ("epochs",): config.epochs,
    }
    for where, want in expected.items():
        got = loaded
        for part in where:
            got = got[part]
        if got != want:
            raise AssertionError(f"finetune.yaml template renders {'.'.join(where)} as {got!r}, not {want!r}")


def render_finetune_slurm(config: RunConfig, run_dir: Path) -> str:
    out = output_dir(config)
    slurm_log = str(out).replace("%", "%%") + "/slurm-%j.out"
    sbatch = {
        "job_name": sbatch_value(job_name(config.my_wandb_run_name), "my_wandb_run_name"),
        "time": sbatch_value(config.time, "time"),
        "mem": sbatch_value(config.mem, "mem"),
        "output": sbatch_value(slurm_log, "output_dir_base"),
    }
    for key in ("account", "partition", "constraint", "qos"):
        value = getattr(config, key)
        sbatch[key] = sbatch_value(value, key) if value else None
    recipe_root, recipe = recipe_invocation(config.custom_recipe)
    return _jinja().get_template("finetune.slurm.j2").render(
        v=config, sbatch=sbatch, run_dir=str(run_dir), output_dir=str(out), recipe=recipe, recipe_root=recipe_root,
        launch=launch(config),
        environment=environment_lines(config), command=COMMAND,
    )


def launch(config: RunConfig) -> str:
    """How finetune.slurm starts training: 'one_process' (`tune run RECIPE`), 'one_node' (torchrun through
    `tune run --nproc_per_node N`, standalone) or 'nodes' (srun: one torchrun per node, c10d rendezvous)."""
    if config.nodes > 1:
        return "nodes"
    distributed = run_config.recipe_kind(config.custom_recipe) == "distributed"
    return "one_node" if distributed or config.procs_per_node > 1 else "one_process"


def environment_lines(config: RunConfig) -> list[str]:
    """Shell lines that load modules and activate the venv or conda environment (quoted)."""
    lines = []
    if config.modules:
        lines.append("module purge")
        lines += [f"module load {shlex.quote(m)} || exit 1" for m in config.modules]
    if config.venv:
        lines.append(f"source {shlex.quote(str(Path(config.venv) / 'bin' / 'activate'))} || exit 1")
    elif config.conda_env:
        lines.append('eval "$(conda shell.bash hook)" || exit 1')
        lines.append(f"conda activate {shlex.quote(config.conda_env)} || exit 1")
    return lines


def dump_setup(setup: Mapping[str, Any]) -> str:
    """setup_finetune.yaml: the run contract's dump of the given keys (validated, in field order)."""
    values = validate_given(setup)
    header = (f"# Settings of this run; keys and defaults: `ck keys` or `{COMMAND} --help`.\n"
              f"# After editing, re-render finetune.yaml and finetune.slurm: cd here and run `{COMMAND}`.\n")
    return header + yaml.safe_dump(values, sort_keys=False, default_flow_style=False, allow_unicode=True,
                                   width=float("inf"))


@dataclass
class RenderResult:
    run_dir: Path
    config: RunConfig                # every key's final value
    output_dir: Path
    files: dict[str, str]            # file name in run_dir -> content
    changed: list[str] = field(default_factory=list)   # names whose content differs from disk
    written: bool = False

    @property
    def values(self) -> dict[str, Any]:
        return self.config.model_dump()

    def write(self) -> list[str]:
        """Atomically write the files whose content changed; returns their names."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in self.changed:
            atomic_write_text(self.run_dir / name, self.files[name], mode=0o755 if name == FINETUNE_SLURM else None)
        self.written = True
        return list(self.changed)

    def diff(self) -> str:
        """Unified diff of what writing would change, file by file."""
        out = []
        for name in self.changed:
            path = self.run_dir / name
            old = read_text(path, name).splitlines(keepends=True) if path.exists() else []
            out.extend(difflib.unified_diff(old, self.files[name].splitlines(keepends=True),
                                            fromfile=str(path), tofile=f"{path} (new)"))
        return "".join(out)


def load_setup_file(path: str | os.PathLike) -> dict[str, Any]:
    """setup_finetune.yaml through the kit's one reader: decode, YAML, duplicated keys and shape errors
    name the file and line."""
    return load_yaml_mapping(path, "config_file",
                             f"run from a run directory holding {SETUP_FILE}, pass --config_file, or give every key as a flag")


def render_run(setup: Mapping[str, Any] | str | os.PathLike | None = None, run_dir: str | os.PathLike = ".",
               overrides: Mapping[str, Any] | None = None, *, settings: Any = None, write: bool = True) -> RenderResult:
    """Render (and with `write`, atomically write) a run directory's files.

    `setup`: a mapping of keys (then setup_finetune.yaml is written from it too), a path to a
    setup_finetune.yaml, or None for `<run_dir>/setup_finetune.yaml` if there is one (flags and
    defaults alone otherwise). `overrides` (the command line's flags) win over it, key by key.
    Files whose content is unchanged are not touched.
    """
    run_dir = Path(run_dir).resolve()
    files: dict[str, str] = {}
    if isinstance(setup, Mapping):
        data = dict(setup)
        files[SETUP_FILE] = dump_setup(data)
    elif setup is None and not (run_dir / SETUP_FILE).is_file():
        data = {}
    else:
        data = load_setup_file(run_dir / SETUP_FILE if setup is None else setup)
    from_file, _ = run_config.canonical(data)
    from_flags, _ = run_config.canonical(overrides or {})
    written = {run_config.check_key(k): k for k in [*data, *(overrides or {})]}  # the spelling used last
    merged = {written[k]: v for k, v in {**from_file, **from_flags}.items()}
    config = resolve(merged, run_dir, settings)
    files[FINETUNE_YAML] = render_finetune_yaml(config)
    files[FINETUNE_SLURM] = render_finetune_slurm(config, run_dir)
    result = RenderResult(run_dir, config, output_dir(config), files)
    for name, text in files.items():
        path = run_dir / name
        if not path.is_file() or path.read_bytes() != text.encode("utf-8"):
            result.changed.append(name)
    if write:
        result.write()
    return result


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description="Render finetune.yaml and finetune.slurm in a run directory. Every key below is a --KEY VALUE "
                    "flag and a setup_finetune.yaml key: flags win over the file (or --config_file), which wins over "
                    "the defaults; with no file, flags and defaults alone render.",
        epilog="The seed README's `python ../../tools/torchtune/setup_finetune.py` is this command. "
               "Then: `sbatch finetune.slurm` (SLURM) or `bash finetune.slurm` (here), or `ck run EXP_DIR`. "
               "The same key reference: `ck keys`.",
        allow_abbrev=False,
    )
    parser.add_argument("--config_file", default=None,
                        help=f"setup file to read (default: ./{SETUP_FILE} when there is one)")
    parser.add_argument("--run_dir", default=".", help="directory to write finetune.yaml and finetune.slurm in (default: .)")
    parser.add_argument("--dry_run", action="store_true", help="print the diff of what would change; write nothing")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for entry in run_config.key_reference():
        group = groups.setdefault(entry["group"], parser.add_argument_group(f"keys: {entry['group']}"))
        flags = [f"--{entry['name']}"] + [f"--{alias}" for alias in entry["aliases"]]
        limits = "".join(f" {s} {v}" for s, v in entry["bounds"].items())
        metavar = entry["type"].upper().replace("|", "_")
        if entry["type"] == "choice":
            metavar = "{" + ",".join(run_config.FIELDS[entry["name"]].annotation.__args__) + "}"
        group.add_argument(*flags, dest=entry["name"], default=argparse.SUPPRESS, metavar=metavar,
                           help=f"{entry['help']}{f' ({limits.strip()})' if limits else ''} "
                                f"(default: {entry['default']})".replace("%", "%%"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    try:
        if unknown:
            at = next((i for i, u in enumerate(unknown) if u.startswith("--")), 0)
            name, _, value = unknown[at].lstrip("-").partition("=")
            if not value and at + 1 < len(unknown) and not unknown[at + 1].startswith("--"):
                value = unknown[at + 1]
            run_config.check_key(name, value or None)  # raises naming the flag, its value and the closest key
            raise CkError("argument", unknown[0], "unexpected", f"flags are --KEY VALUE; see `{COMMAND} --help`")
        meta = {"config_file", "run_dir", "dry_run"}
        overrides = {k: v for k, v in vars(args).items() if k not in meta}
        overrides = {_written_flag(argv, k): v for k, v in overrides.items()}
        setup = Path(args.config_file) if args.config_file is not None else None
        if not args.dry_run:
            check_writable_dir(args.run_dir, "--run_dir", "run from (or pass --run_dir) a writable run directory")
        result = render_run(setup, args.run_dir, overrides, write=not args.dry_run)
    except CkError as err:
        print(f"setup_finetune: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as exc:  # the run directory cannot be written: one line, never a traceback
        from cruijff_kit.cli import filesystem_error

        print(f"setup_finetune: error: {filesystem_error(exc)}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(result.diff() or "nothing would change")
        return 0
    for name in (FINETUNE_YAML, FINETUNE_SLURM):
        state = "wrote" if name in result.changed else "unchanged"
        print(f"{state} {result.run_dir / name}")
    print(f"output_dir: {result.output_dir}")
    print("next: sbatch finetune.slurm   (or without SLURM: bash finetune.slurm)")
    return 0


def _written_flag(argv: list[str] | None, name: str) -> str:
    """The spelling the user typed for key `name` (an alias or the key), so errors name that flag."""
    typed = [a[2:].split("=", 1)[0] for a in (sys.argv[1:] if argv is None else argv) if a.startswith("--")]
    return next((t for t in reversed(typed) if t in run_config.aliases_of(name)), name)


if __name__ == "__main__":
    sys.exit(main())
