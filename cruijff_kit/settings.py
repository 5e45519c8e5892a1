"""Where things go and how jobs run: resolved from flags > environment (CK_*) > settings file > defaults.

The settings file is YAML (`$CK_CONFIG`, else ~/.config/cruijff_kit/settings.yaml) written by
`ck config set KEY VALUE`. Every key is validated the same way wherever it comes from, and an
unknown key is an error naming the closest known one.

    settings = load_settings({"scratch": args.scratch})   # None values mean "flag not given"
    settings.scratch, settings.source("scratch")           # -> Path(...), "flag"
"""

from __future__ import annotations

import datetime as _dt
import difflib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from cruijff_kit.errors import CkError
from cruijff_kit.inputs import load_yaml_mapping
from cruijff_kit.fsutil import atomic_write_text, check_writable_dir, existing_ancestor
from cruijff_kit.paths import default_data_dir

EXECUTORS = ("local", "slurm")

SLURM_TIME_RE = re.compile(r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$")
SLURM_MEM_RE = re.compile(r"^[1-9]\d*[KMGT]?$")
MODULE_RE = re.compile(r"^[A-Za-z0-9_.+/@:-]+$")
WANDB_PROJECT_RE = re.compile(r"^[^/\\#?%:\s]{1,128}$")


# ---------------------------------------------------------------- value checks shared with the plan model


def normalize_slurm_time(value: Any, field: str = "slurm_time") -> str:
    """`HH:MM:SS` or `D-HH:MM:SS`. YAML 1.1 reads an unquoted 01:30:00 as 5400 seconds: map it back."""
    if isinstance(value, bool):
        raise CkError(field, value, "not a SLURM time", "write it as HH:MM:SS or D-HH:MM:SS, e.g. 01:00:00")
    if isinstance(value, int) and value >= 0:
        days, rest = divmod(value, 86400)
        hours, rest = divmod(rest, 3600)
        text = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
        text = f"{days}-{text}" if days else text
    else:
        text = str(value).strip()
        if not SLURM_TIME_RE.match(text):
            raise CkError(field, value, "not a SLURM time", "write it as HH:MM:SS or D-HH:MM:SS, e.g. 01:00:00")
        hms = text.split("-")[-1].split(":")
        if int(hms[1]) > 59 or int(hms[2]) > 59:
            raise CkError(field, value, "minutes and seconds must be below 60", "e.g. 01:30:00")
    if slurm_time_seconds(text) == 0:
        raise CkError(field, value, "a time limit of zero", "give at least 00:01:00")
    return text


def slurm_time_seconds(text: str) -> int:
    days = 0
    if "-" in text:
        day_text, text = text.split("-", 1)
        days = int(day_text)
    h, m, s = (int(x) for x in text.split(":"))
    return days * 86400 + h * 3600 + m * 60 + s


def normalize_slurm_mem(value: Any, field: str = "slurm_mem") -> str:
    text = str(value).strip().upper()
    if text[-2:] in ("KB", "MB", "GB", "TB"):  # not a bare B: SLURM reads a plain number as MB
        text = text[:-1]
    if isinstance(value, bool) or not SLURM_MEM_RE.match(text):
        raise CkError(field, value, "not a SLURM memory size", "a positive number with unit K, M, G or T, e.g. 32G")
    return text


def default_wandb_project(today: _dt.date | None = None) -> str:
    return f"bit_sequences_{(today or _dt.date.today()).isoformat()}"


def normalize_wandb_project(value: Any, field: str = "wandb_project") -> str:
    text = str(value).strip()
    if not WANDB_PROJECT_RE.match(text):
        raise CkError(field, value, "not a valid W&B project name (no spaces or / \\ # ? % :)",
                      f"e.g. {default_wandb_project()}")
    return text


# ---------------------------------------------------------------- parsers per key


def _as_path(value: Any, field: str) -> Path:
    text = str(value).strip()
    if not text:
        raise CkError(field, value, "empty path", "give a directory, e.g. ./ck-scratch")
    path = Path(os.path.expandvars(text)).expanduser().resolve()
    ancestor = existing_ancestor(path)
    if not ancestor.is_dir():
        where = "is a file" if ancestor == path else f"is under {ancestor}, which is a file"
        raise CkError(field, value, f"{where}, not a directory", f"give a directory, e.g. {path.parent / 'ck-data'}")
    return path


def _as_optional_str(value: Any, field: str) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    if "\n" in text:
        raise CkError(field, value, "must be one line", None)
    return text or None


def _as_modules(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        items = [m.strip() for m in value.split(",")] if "," in value else value.split()
    elif isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        raise CkError(field, value, "not a list of module names", "e.g. `ck config set modules anaconda3/2024.6,cudatoolkit/12.4`")
    bad = next((m for m in items if not MODULE_RE.match(m)), None)
    if bad is not None:
        raise CkError(field, value, f"module name {bad!r} is empty or has a space or a shell character",
                      "separate module names by commas, e.g. anaconda3/2024.6,cudatoolkit/12.4")
    return items


def _as_executor(value: Any, field: str) -> str:
    text = str(value).strip().lower()
    if text not in EXECUTORS:
        raise CkError(field, value, "unknown executor", "use local or slurm")
    return text


def _number(cast: Callable[[str], Any], minimum: float, example: str) -> Callable[[Any, str], Any]:
    def parse(value: Any, field: str) -> Any:
        try:
            number = cast(str(value).strip()) if not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is None or number < minimum:
            what = "a whole number" if cast is int else "a number"
            raise CkError(field, value, f"must be {what} >= {minimum}", f"e.g. {example}")
        return number
    return parse


def _as_nonempty_str(value: Any, field: str) -> str:
    text = _as_optional_str(value, field)
    if not text:
        raise CkError(field, value, "must not be empty", "e.g. claude-sonnet-4-6")
    return text


def _running_venv() -> str | None:
    return sys.prefix if sys.prefix != sys.base_prefix else None


@dataclass(frozen=True)
class _Key:
    parse: Callable[[Any, str], Any]
    default: Callable[[dict[str, Any]], Any]  # receives the values resolved so far (scratch first)
    help: str


KEYS: dict[str, _Key] = {
    "scratch": _Key(_as_path, lambda _: Path("./ck-scratch").resolve(),
                    "root for ck-sanity-checks/, ck-experiments/ and ck-outputs/ (default ./ck-scratch)"),
    "models_dir": _Key(_as_path, lambda v: v["scratch"] / "models",
                       "directory holding one folder per model (default <scratch>/models)"),
    "data_dir": _Key(_as_path, lambda _: default_data_dir(),
                     "where datasets are generated and read (default data/green/bit_sequences in the checkout)"),
    "slurm_account": _Key(_as_optional_str, lambda _: None, "#SBATCH --account (default: none)"),
    "slurm_partition": _Key(_as_optional_str, lambda _: None, "#SBATCH --partition (default: none)"),
    "slurm_constraint": _Key(_as_optional_str, lambda _: None, "#SBATCH --constraint (default: none)"),
    "slurm_qos": _Key(_as_optional_str, lambda _: None, "#SBATCH --qos (default: none)"),
    "slurm_time": _Key(normalize_slurm_time, lambda _: "01:00:00",
                       "default job time limit HH:MM:SS (a preset's own time is used unless you set this)"),
    "slurm_mem": _Key(normalize_slurm_mem, lambda _: "32G",
                      "default job memory, e.g. 32G (a preset's own memory is used unless you set this)"),
    "conda_env": _Key(_as_optional_str, lambda _: None, "conda environment activated by finetune.slurm"),
    "venv": _Key(_as_optional_str, lambda _: _running_venv(),
                 "virtualenv activated by finetune.slurm (default: the venv running ck)"),
    "modules": _Key(_as_modules, lambda _: [], "environment modules loaded by finetune.slurm (comma separated)"),
    "wandb_project": _Key(normalize_wandb_project, lambda _: default_wandb_project(),
                          "W&B project (default bit_sequences_YYYY-MM-DD)"),
    "executor": _Key(_as_executor, lambda _: "local", "local (subprocesses) or slurm (sbatch)"),
    "max_local_jobs": _Key(_number(int, 1, "2 (jobs run at once by the local executor)"), lambda _: 2,
                           "jobs the local executor runs at once"),
    "llm_model": _Key(_as_nonempty_str, lambda _: "claude-sonnet-4-6",
                      "Anthropic model used by `ck design --describe`"),
    "llm_max_tokens": _Key(_number(int, 1, "4096"), lambda _: 4096, "max tokens of one `ck design --describe` reply"),
    "llm_timeout": _Key(_number(float, 0.001, "60"), lambda _: 60.0, "seconds to wait for one Anthropic API call"),
    "llm_max_retries": _Key(_number(int, 0, "2"), lambda _: 2, "retries of a 429/5xx/timed-out Anthropic API call"),
    "llm_max_rounds": _Key(_number(int, 1, "3"), lambda _: 3,
                           "proposals `ck design --describe` may make before an invalid plan is an error"),
}


def env_var(key: str) -> str:
    return "CK_" + key.upper()


def settings_path(env: Mapping[str, str] = os.environ) -> Path:
    """`$CK_CONFIG` if set, else ~/.config/cruijff_kit/settings.yaml."""
    if env.get("CK_CONFIG"):
        return Path(env["CK_CONFIG"]).expanduser()
    return Path("~/.config/cruijff_kit/settings.yaml").expanduser()


def check_key(key: str, where: str = "key") -> str:
    if key in KEYS:
        return key
    dashed = key.replace("-", "_").lower()
    if dashed in KEYS:
        return dashed
    close = difflib.get_close_matches(dashed, list(KEYS), n=1, cutoff=0.4)
    hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(KEYS)}"
    raise CkError(where, key, "unknown setting", hint)


class Settings:
    """Resolved settings. Attributes are the KEYS; `source(key)` says where each value came from."""

    def __init__(self, values: dict[str, Any], sources: dict[str, str], path: Path):
        self._values = dict(values)
        self._sources = dict(sources)
        self.path = path

    def __getattr__(self, key: str) -> Any:
        values = self.__dict__.get("_values", {})
        if key in values:
            return values[key]
        raise AttributeError(key)

    def source(self, key: str) -> str:
        return self._sources[check_key(key)]

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"Settings({inner})"


def read_settings_file(path: Path, validate_keys: bool = True) -> dict[str, Any]:
    """The raw mapping in the settings file ({} when absent). Unknown keys are errors."""
    if not path.exists():
        return {}
    data = load_yaml_mapping(path, "settings file", fix="fix it by hand, or delete it and use `ck config set`")
    if validate_keys:
        for key in data:
            check_key(str(key), where=f"{path}: key")
    return data


def _file_path(path: str | os.PathLike | None, env: Mapping[str, str]) -> Path:
    return Path(path).expanduser() if path is not None else settings_path(env)


def load_settings(overrides: dict | None = None, *, env: Mapping[str, str] = os.environ,
                  path: str | os.PathLike | None = None) -> Settings:
    """Resolve every key: overrides (flags; None = not given) > CK_* env > settings file > default."""
    file_path = _file_path(path, env)
    flags = {}
    for key, value in (overrides or {}).items():
        if value is not None:
            flags[check_key(key, where="flag")] = value
    file_values = read_settings_file(file_path)

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, spec in KEYS.items():  # dict order: scratch before models_dir, whose default needs it
        if key in flags:
            raw, source, where = flags[key], "flag", key
        elif env.get(env_var(key), "") != "":
            raw, source, where = env[env_var(key)], "env", env_var(key)
        elif key in file_values:
            raw, source, where = file_values[key], "file", f"{file_path}: {key}"
        else:
            values[key], sources[key] = spec.default(values), "default"
            continue
        values[key] = spec.parse(raw, where)
        sources[key] = source
    return Settings(values, sources, file_path)


def set_setting(key: str, value: Any, *, env: Mapping[str, str] = os.environ,
                path: str | os.PathLike | None = None) -> tuple[str, Any, Path]:
    """Validate and store one key in the settings file (atomic rewrite). Returns (key, stored value, file)."""
    key = check_key(key)
    file_path = _file_path(path, env)
    data = read_settings_file(file_path)
    parsed = KEYS[key].parse(value, key)
    data[key] = str(parsed) if isinstance(parsed, Path) else parsed
    check_writable_dir(file_path.parent, "settings file (CK_CONFIG)", "set CK_CONFIG to a file in a writable directory")
    _write_settings_file(file_path, data)
    return key, parsed, file_path


def unset_setting(key: str, *, env: Mapping[str, str] = os.environ,
                  path: str | os.PathLike | None = None) -> bool:
    file_path = _file_path(path, env)
    data = read_settings_file(file_path, validate_keys=False)  # so a misspelt key can be removed
    if key not in data:
        key = check_key(key)
    if key not in data:
        return False
    del data[key]
    _write_settings_file(file_path, data)
    return True


def _write_settings_file(file_path: Path, data: dict[str, Any]) -> None:
    ordered = {k: data[k] for k in KEYS if k in data} | {k: v for k, v in data.items() if k not in KEYS}
    header = "# cruijff_kit settings, written by `ck config set`. Keys: `ck config show`.\n"
    atomic_write_text(file_path, header + yaml.safe_dump(ordered, sort_keys=False, default_flow_style=False))


def format_value(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, list):
        return ",".join(value) if value else "(none)"
    return str(value)
