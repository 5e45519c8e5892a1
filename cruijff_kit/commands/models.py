"""`ck models`: build the embedded tiny Llama, verify a downloaded model directory, list models_dir.

- `ck models tiny`: build the embedded tiny Llama (no download, a few seconds on a CPU).
- `ck models verify DIR`: check a Hugging Face model directory against what the runs will ask torchtune to
  load (cruijff_kit.models.verify); one line per problem on stderr, exit 2.
- `ck models list`: every directory under models_dir, the registry entry it matches and its verdict.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cruijff_kit.errors import CkError


def _default_models_dir() -> Path:
    """The `models_dir` setting (flags > CK_* env > settings file > default)."""
    from cruijff_kit.settings import load_settings

    return Path(load_settings().models_dir)


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_action", metavar="ACTION", required=True)
    tiny = sub.add_parser(
        "tiny",
        help="write <models-dir>/ck-tiny-llama/ (HF layout: config.json, model.safetensors, original/tokenizer.model)",
        description="Build the embedded tiny Llama 3.2 (2 layers, d=128, byte-level tokenizer) in the layout of a "
        "Hugging Face model directory, loadable by torchtune's FullModelHFCheckpointer and llama3_tokenizer.",
    )
    tiny.add_argument("--models-dir", type=Path, default=None,
                      help="directory that holds the models (default: the models_dir setting, see `ck config`)")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random base weights (default 0)")
    tiny.add_argument("--force", action="store_true", help="rebuild even if the model directory exists")

    verify = sub.add_parser(
        "verify",
        help="check a Hugging Face model directory against what the runs ask torchtune to load",
        description="Check DIR against the registry model it is checked as (--model, else the one named like DIR, "
        "else the one whose architecture config.json has): config.json (model_type, layers, heads, kv heads, "
        "hidden size, head_dim, intermediate size, vocab, tied embeddings, rope_theta, rms_norm_eps equal the "
        "torchtune builder's; torch_dtype bfloat16/float16/float32), model.safetensors or the shards named by "
        "model.safetensors.index.json (present, headers readable, not truncated, every tensor the builder needs "
        "with its shape and config.json's dtype, none extra), original/tokenizer.model (a loadable tiktoken BPE "
        "file whose ids fit the vocab). Reads headers only: no torch, a second or two. Exit 0 when it passes; "
        "otherwise one line per problem (file: field: problem) on stderr and exit 2.",
    )
    verify.add_argument("model_dir", type=Path, metavar="DIR", help="the model directory (holds config.json)")
    verify.add_argument("--model", metavar="NAME", default=None,
                        help="registry model to check against (default: matched from DIR's name or config.json)")

    listing = sub.add_parser(
        "list",
        help="the model directories under models_dir, which registry model each matches, and whether it verifies",
        description="One line per directory under models_dir: name, the registry model it matches, the verdict "
        "of `ck models verify` (ok or the number of problems) and its size; registry models not installed are "
        "listed after it. Exit 0.",
    )
    listing.add_argument("--models-dir", type=Path, default=None,
                         help="directory that holds the models (default: the models_dir setting, see `ck config`)")


def run(args: argparse.Namespace) -> int:
    if args.models_action == "verify":
        return _verify(args)
    if args.models_action == "list":
        return _list(args)
    from cruijff_kit.models.tiny import MODEL_NAME, build_tiny_model

    models_dir = args.models_dir if args.models_dir is not None else _default_models_dir()
    target = Path(models_dir).expanduser().resolve() / MODEL_NAME
    existed = (target / "model.safetensors").is_file()
    if not existed or args.force:
        from cruijff_kit.fsutil import check_writable_dir

        check_writable_dir(target.parent, "--models-dir" if args.models_dir is not None else "models_dir",
                           "give a writable directory (or `ck config set models_dir DIR`)")
    path = build_tiny_model(models_dir, seed=args.seed, force=args.force)
    if existed and not args.force:
        print(f"{path}: already built (use --force to rebuild)")
    else:
        print(f"{path}: built (seed {args.seed})")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from cruijff_kit.models.registry import get_model
    from cruijff_kit.models.verify import verify_model_dir

    model_dir = args.model_dir.expanduser()
    if not model_dir.is_dir():
        raise CkError("DIR", str(args.model_dir), "is not a directory", "give the model directory that holds config.json")
    spec = get_model(args.model) if args.model is not None else None
    report = verify_model_dir(model_dir, spec)
    if not report.ok:
        for problem in report.problems:
            print(problem, file=sys.stderr)
        return 2
    print(f"{report.model_dir}: {report.summary()}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from cruijff_kit.models.registry import MODELS
    from cruijff_kit.models.verify import verify_model_dir

    models_dir = (args.models_dir if args.models_dir is not None else _default_models_dir()).expanduser().resolve()
    if models_dir.exists() and not models_dir.is_dir():
        raise CkError("--models-dir" if args.models_dir is not None else "models_dir", str(models_dir),
                      "is a file, not a directory", "give the directory that holds one folder per model")
    print(f"models_dir: {models_dir}")
    dirs = sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if models_dir.is_dir() else []
    rows = [("directory", "registry model", "verify", "size")]
    for path in dirs:
        report = verify_model_dir(path)
        matched = report.spec.name if report.spec is not None else "-"
        verdict = "ok" if report.ok else f"{len(report.problems)} problem(s): `ck models verify {path}`"
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        rows.append((path.name, matched, verdict, f"{size / 1e9:.2f} GB"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows if dirs else []:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])
    if not dirs:
        print("(no model directories)")
    missing = [name for name in MODELS if not (models_dir / name).is_dir()]
    if missing:
        print(f"not installed: {', '.join(missing)} (ck-tiny-llama: `ck models tiny`; others: download into "
              f"{models_dir}/<name>/, see README 'Using a real model')")
    return 0
