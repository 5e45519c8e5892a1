"""`ck`: one command whose verbs are the steps of the workflow.

Each verb lives in `cruijff_kit/commands/<verb>.py` exposing `configure(parser)` and
`run(args) -> int`. Modules are imported only when their verb is used, so `ck --help`
stays fast (torch is never imported for it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys

from cruijff_kit.errors import CkError

# verb -> (module under cruijff_kit.commands, one-line help). Order is the workflow's.
VERBS: dict[str, tuple[str, str]] = {
    "generate": ("generate", "generate a sanity check's dataset (ck generate --help lists them)"),
    "design": ("design", "plan an experiment: write experiment_summary.md and design-experiment.log"),
    "scaffold": ("scaffold", "create one directory per run with setup_finetune.yaml, finetune.yaml, finetune.slurm"),
    "run": ("run", "submit the scaffolded runs (SLURM or local) and monitor them until they end"),
    "status": ("status", "one-shot view of an experiment's jobs"),
    "summarize": ("summarize", "per-run numbers, plots and a PASS/FAIL/INCONCLUSIVE verdict"),
    "sanity-check": ("sanity_check", "design -> scaffold -> run -> summarize in one command"),
    "keys": ("keys", "list every setup_finetune.yaml key: type, default, bounds, help (--json)"),
    "config": ("config", "show or set settings (scratch dir, models dir, SLURM account, ...)"),
    "log": ("log", "append an entry to an experiment's workflow log"),
    "models": ("models", "build the embedded tiny model; verify or list model directories"),
}


class NotBuiltYet(Exception):
    pass


def _load(verb: str):
    module_name, _ = VERBS[verb]
    try:
        return importlib.import_module(f"cruijff_kit.commands.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"cruijff_kit.commands.{module_name}":
            raise NotBuiltYet(verb) from None
        raise


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ck",
        description="cruijff_kit: plan, scaffold, launch, monitor and judge fine-tuning sanity checks.",
        epilog="Workflow: ck generate -> ck design -> ck scaffold -> ck run -> ck summarize "
        "(or all at once: ck sanity-check CHECK). `ck VERB --help` for each verb.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, (_, help_text) in VERBS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == verb:
            _load(name).configure(p)
    return parser


EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what `ck ... | head` reports when head stops reading


def main(argv: list[str] | None = None) -> int:
    """The one place where a verb's errors, Ctrl-C and a closed stdout become exit codes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    if verb not in VERBS:
        verb = None
    try:
        try:
            return _run_verb(verb, argv)
        finally:
            sys.stdout.flush()  # a reader that has gone shows up here, not in Python's exit
    except CkError as err:
        print(f"{_prog(verb)}: error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:
        _drop_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:  # a filesystem fault no pre-check caught: still one line, never a traceback
        print(f"{_prog(verb)}: error: {filesystem_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{_prog(verb)}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run_verb(verb: str | None, argv: list[str]) -> int:
    try:
        parser = build_parser(verb)
    except NotBuiltYet as exc:
        print(f"ck {exc}: not built yet in this version of cruijff_kit", file=sys.stderr)
        return 3
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["ck", *argv])  # what the run log records as the command
    return int(_load(args.verb).run(args) or 0)


def filesystem_error(exc: OSError) -> CkError:
    """An OSError as the kit's one line: the path, what went wrong, and a fix."""
    path = exc.filename or "path"
    fixes = {
        "PermissionError": "make it writable (chmod u+w) or choose another directory",
        "NotADirectoryError": "a parent of that path is a file: move the file or choose another directory",
        "IsADirectoryError": "give a file's path, not a directory's",
        "FileExistsError": "move it away or choose another path",
    }
    return CkError("path", str(path), f"cannot be used ({exc.strerror or exc})",
                   fixes.get(type(exc).__name__, "check the path, the disk and its permissions"))


def _prog(verb: str | None) -> str:
    return f"ck {verb}" if verb else "ck"


def _drop_stdout() -> None:
    """The reader of stdout has gone: send what is still buffered nowhere, so that Python's own
    flush at exit does not print a second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
