"""The bit-sequences dataset generator (step 0 of the sanity check).

Produces the same data as the seed's generator for the same arguments and seed, without ever
listing the 2^bit_length possible strings. The seed's generator, on `numpy.random.RandomState(seed)`:

  a. drew N rows as `rng.choice(all_strings, size=N)` over the lexicographically ordered list of
     all 2^n strings. `choice` with replacement only draws `rng.randint(0, 2**n, size=N)` and
     indexes the list, and a string's index in that list *is* its binary value, so we keep the
     integers and turn them into strings only when writing;
  b. picked validation positions as `rng.choice(N, size=val_size, replace=False)`, which is
     `rng.permutation(N)[:val_size]`. Validation = those rows in position order; train = the
     other rows in position order minus every row whose string occurs in validation;
  c. drew one `rng.rand()` per row, train rows first, then validation rows. Parity labels are
     (number of ones mod 2) XOR (draw < p); Bernoulli labels are (draw < p).

Largest bit_length: 63. `randint(0, 2**n)` (int64, exclusive high) accepts high = 2**63 and
refuses 2**64, so n = 63 is the last length at which step (a) is still the seed's call sequence.

Time and memory are linear in N (plus the sorts of de-duplication); the JSON is encoded by numpy
into one fixed-width byte row per example and written atomically, with a provenance record
(`<output>.provenance.json`) beside it that later steps use to decide whether to reuse the file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import operator
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cruijff_kit.errors import CkError
from cruijff_kit.fsutil import atomic_write_bytes, atomic_write_json, check_writable_dir, existing_ancestor
from cruijff_kit.inputs import load_json
from cruijff_kit.paths import default_data_dir

GENERATOR_NAME = "cruijff_kit.generate.bit_sequences"  # recorded in provenance files: kept so existing datasets are reused
# Bump when the bytes written for the same arguments change; provenance records name it.
GENERATOR_VERSION = "1"
MAX_BIT_LENGTH = 63
PROVENANCE_SUFFIX = ".provenance.json"

_TRUE_WORDS = {"true", "t", "1"}
_FALSE_WORDS = {"false", "f", "0"}

# One example is one fixed-width line; the bits and the label are filled into the placeholders.
_ROW_PREFIX = b'{"instruction": "", "input": "'
_ROW_MIDDLE = b'", "output": "'
_ROW_SUFFIX = b'"},\n'
_ENCODE_CHUNK_ROWS = 1 << 16


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationArguments:
    """The arguments that determine the data (everything except where it is written)."""

    bit_length: int
    N: int
    val_size: int
    bit_parity: bool
    p: float = 0.0
    seed: int = 42

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_bool(flag: str, value: object) -> bool:
    """True/False, case-insensitive, also t/f/1/0; anything else is a CkError naming `flag`."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    if value is None:
        raise CkError(flag, value, "is required",
                      f"pass {flag} True (parity labels) or {flag} False (Bernoulli labels)")
    raise CkError(flag, value, "is not a boolean", f"use {flag} True or {flag} False (also t/f/1/0, any case)")


def _parse_int(flag: str, value: object, example: str) -> int:
    if value is None:
        raise CkError(flag, value, "is required", f"pass e.g. {flag} {example}")
    if not isinstance(value, (bool, np.bool_)):
        try:
            return int(value.strip()) if isinstance(value, str) else operator.index(value)
        except (TypeError, ValueError):
            pass
    raise CkError(flag, value, "is not an integer", f"pass a whole number, e.g. {flag} {example}")


def _parse_probability(flag: str, value: object) -> float:
    if value is None:
        return 0.0
    number = None
    if not isinstance(value, (bool, np.bool_)):
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            pass
    if number is None:
        raise CkError(flag, value, "is not a number", f"pass a probability in [0, 1], e.g. {flag} 0.5")
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise CkError(flag, value, "is not in [0, 1]", f"pass a probability in [0, 1], e.g. {flag} 0 or {flag} 0.5")
    return number


def validate_arguments(bit_length, N, val_size, bit_parity, p=0.0, seed=42) -> GenerationArguments:
    """Check and normalise generator arguments (ints, strings from the command line, ...).

    Raises CkError naming the flag, the value and the fix for anything out of range.
    """
    bit_length = _parse_int("--bit_length", bit_length, "15")
    if not 1 <= bit_length <= MAX_BIT_LENGTH:
        raise CkError(
            "--bit_length", bit_length, f"must be between 1 and {MAX_BIT_LENGTH}",
            f"pass e.g. --bit_length 15 ({MAX_BIT_LENGTH} is the longest the seed's RandomState draw supports)",
        )
    N = _parse_int("--N", N, "33000")
    if N < 1:
        raise CkError("--N", N, "must be at least 1", "pass the total number of examples, e.g. --N 33000")
    val_size = _parse_int("--val_size", val_size, "4000")
    if not 0 < val_size < N:
        raise CkError("--val_size", val_size, f"must be > 0 and < N ({N})",
                      f"pass a validation size between 1 and {N - 1}, e.g. --val_size {max(1, N // 8)}")
    bit_parity = parse_bool("--bit_parity", bit_parity)
    p = _parse_probability("--p", p)
    seed = _parse_int("--seed", 42 if seed is None else seed, "42")
    if not 0 <= seed < 2**32:
        raise CkError("--seed", seed, "must be in [0, 2**32) (numpy RandomState seeds)", "pass e.g. --seed 42")
    return GenerationArguments(bit_length, N, val_size, bit_parity, p, seed)


def validate_output_name(output: object) -> str:
    """A plain file name: no directories (those go in --output_dir)."""
    if output is None or (isinstance(output, str) and not output.strip()):
        raise CkError("--output", output, "is required", "pass a file name, e.g. --output parity.json")
    output = str(output)
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if any(sep in output for sep in separators) or output in (".", ".."):
        raise CkError("--output", output, "must be a file name, not a path",
                      f"pass --output {Path(output).name if Path(output).name not in ('', '.', '..') else 'parity.json'} "
                      "and put the directory in --output_dir")
    return output


def check_output_dir(output_dir: str | os.PathLike) -> Path:
    """Refuse a directory that cannot be created or written, before any work is done."""
    directory = Path(output_dir).expanduser().absolute()
    fix = "pass a writable directory with --output_dir"
    nearest = existing_ancestor(directory)
    if not nearest.is_dir():
        raise CkError("--output_dir", str(output_dir), f"{nearest} exists and is not a directory", fix)
    check_writable_dir(directory, "--output_dir", fix)
    return directory


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def _count_distinct(values: np.ndarray) -> int:
    # sort + compare neighbours: ~100x faster than np.unique on this numpy for 10^6 int64
    ordered = np.sort(values)
    return int(ordered.size and 1 + np.count_nonzero(ordered[1:] != ordered[:-1]))


@dataclass
class BitSequenceSplits:
    """The sampled data, compactly: each string as its integer value, each label as 0/1."""

    bit_length: int
    train_values: np.ndarray
    train_labels: np.ndarray
    validation_values: np.ndarray
    validation_labels: np.ndarray
    removed_by_dedup: int

    def counts(self) -> dict[str, int]:
        return {
            "train": int(self.train_values.size),
            "validation": int(self.validation_values.size),
            "train_distinct": _count_distinct(self.train_values),
            "validation_distinct": _count_distinct(self.validation_values),
            "removed_by_dedup": int(self.removed_by_dedup),
            "train_label_ones": int(self.train_labels.sum(dtype=np.int64)),
            "validation_label_ones": int(self.validation_labels.sum(dtype=np.int64)),
        }

    def strings(self, values: np.ndarray) -> list[str]:
        return [format(v, f"0{self.bit_length}b") for v in values.tolist()]

    def to_dict(self) -> dict[str, list[dict[str, str]]]:
        """The dataset as the JSON file holds it (Python objects: heavy for large N)."""

        def rows(values, labels):
            return [
                {"instruction": "", "input": bits, "output": str(label)}
                for bits, label in zip(self.strings(values), labels.tolist())
            ]

        return {
            "train": rows(self.train_values, self.train_labels),
            "validation": rows(self.validation_values, self.validation_labels),
        }


def sample_bit_sequences(bit_length, N, val_size, bit_parity, p=0.0, seed=42) -> BitSequenceSplits:
    """Draw the seed generator's data (see the module docstring for the call sequence)."""
    return _sample(validate_arguments(bit_length, N, val_size, bit_parity, p, seed))


def _sample(args: GenerationArguments) -> BitSequenceSplits:
    rng = np.random.RandomState(args.seed)

    # (a) what rng.choice(all 2^n strings, size=N) draws: indices = binary values of the strings
    values = rng.randint(0, 2**args.bit_length, size=args.N, dtype=np.int64)

    # (b) what rng.choice(N, size=val_size, replace=False) draws
    validation_positions = rng.permutation(args.N)[: args.val_size]
    is_validation = np.zeros(args.N, dtype=bool)
    is_validation[validation_positions] = True
    del validation_positions
    validation_values = values[is_validation]
    train_candidates = values[~is_validation]
    del values, is_validation
    keep = ~np.isin(train_candidates, validation_values)
    train_values = train_candidates[keep]
    removed = int(train_candidates.size - train_values.size)
    del train_candidates, keep
    if train_values.size == 0:
        raise CkError(
            "--val_size", args.val_size,
            f"de-duplication removed all {removed} training rows: every train string also occurs in "
            f"validation (only 2^{args.bit_length} = {2**args.bit_length} distinct strings exist)",
            "use a larger --bit_length (2^bit_length >> val_size) or a smaller --val_size",
        )

    # (c) one rand() per row, train rows first; rand(k) draws exactly what k rand() calls draw
    draws = rng.rand(train_values.size + validation_values.size)
    labels = (draws < args.p).astype(np.uint8)
    del draws
    if args.bit_parity:
        labels[: train_values.size] ^= (np.bitwise_count(train_values) & 1).astype(np.uint8)
        labels[train_values.size:] ^= (np.bitwise_count(validation_values) & 1).astype(np.uint8)
    return BitSequenceSplits(
        bit_length=args.bit_length,
        train_values=train_values,
        train_labels=labels[: train_values.size],
        validation_values=validation_values,
        validation_labels=labels[train_values.size:],
        removed_by_dedup=removed,
    )


def generate_bit_sequences(bit_length, N, val_size, bit_parity, p=0.0, seed=42) -> dict:
    """`{"train": [...], "validation": [...]}`, rows `{"instruction": "", "input": bits, "output": "0"|"1"}`."""
    return sample_bit_sequences(bit_length, N, val_size, bit_parity, p, seed).to_dict()


# --------------------------------------------------------------------------------------------
# Encoding and writing
# --------------------------------------------------------------------------------------------


def _row_width(bit_length: int) -> int:
    return len(_ROW_PREFIX) + bit_length + len(_ROW_MIDDLE) + 1 + len(_ROW_SUFFIX)


def _fill_rows(block: np.ndarray, values: np.ndarray, labels: np.ndarray, bit_length: int) -> None:
    """Write one `{...},\\n` line per example into `block` (rows x row_width, uint8)."""
    template = np.frombuffer(
        _ROW_PREFIX + b"0" * bit_length + _ROW_MIDDLE + b"0" + _ROW_SUFFIX, dtype=np.uint8
    )
    bits_start = len(_ROW_PREFIX)
    label_column = bits_start + bit_length + len(_ROW_MIDDLE)
    for start in range(0, values.size, _ENCODE_CHUNK_ROWS):
        stop = min(start + _ENCODE_CHUNK_ROWS, values.size)
        rows = block[start:stop]
        rows[:] = template
        # big-endian bytes -> 64 bits per value, most significant first; keep the last bit_length
        big_endian = values[start:stop].astype(">u8").view(np.uint8).reshape(-1, 8)
        bits = np.unpackbits(big_endian, axis=1)[:, 64 - bit_length :]
        np.add(bits, ord("0"), out=rows[:, bits_start : bits_start + bit_length])
        np.add(labels[start:stop], ord("0"), out=rows[:, label_column])


def encode_dataset_json(splits: BitSequenceSplits) -> np.ndarray:
    """The JSON file's bytes as one uint8 array, one example per line:

        {"train": [
        {"instruction": "", "input": "0101", "output": "0"},
        ...
        ], "validation": [
        ...
        ]}
    """
    width = _row_width(splits.bit_length)
    header, middle, footer = b'{"train": [\n', b', "validation": [\n', b"}\n"
    n_train, n_val = splits.train_values.size, splits.validation_values.size
    total = len(header) + n_train * width + len(middle) + n_val * width + len(footer)
    buffer = np.empty(total, dtype=np.uint8)
    offset = 0

    def put(data: bytes) -> None:
        nonlocal offset
        buffer[offset : offset + len(data)] = np.frombuffer(data, dtype=np.uint8)
        offset += len(data)

    def put_rows(values: np.ndarray, labels: np.ndarray) -> None:
        nonlocal offset
        size = values.size * width
        _fill_rows(buffer[offset : offset + size].reshape(values.size, width), values, labels, splits.bit_length)
        offset += size
        # the last row's ",\n" becomes "\n]": no trailing comma, list closed
        buffer[offset - 2 : offset] = np.frombuffer(b"\n]", dtype=np.uint8)

    put(header)
    put_rows(splits.train_values, splits.train_labels)
    put(middle)
    put_rows(splits.validation_values, splits.validation_labels)
    put(footer)
    assert offset == total
    return buffer


@dataclass
class GenerationResult:
    path: Path
    provenance_path: Path
    arguments: GenerationArguments
    counts: dict[str, int]
    sha256: str
    bytes_written: int
    provenance: dict[str, Any] = field(repr=False, default_factory=dict)


def provenance_path_for(data_path: str | os.PathLike) -> Path:
    data_path = Path(data_path)
    return data_path.with_name(data_path.name + PROVENANCE_SUFFIX)


def write_dataset(bit_length, N, val_size, bit_parity, p=0.0, seed=42, *, output,
                  output_dir: str | os.PathLike | None = None) -> GenerationResult:
    """Generate and write `<output_dir>/<output>` and `<output>.provenance.json`, atomically.

    `output_dir` defaults to cruijff_kit.paths.default_data_dir(). Bad input raises CkError and
    writes nothing.
    """
    args = validate_arguments(bit_length, N, val_size, bit_parity, p, seed)
    output = validate_output_name(output)
    directory = check_output_dir(default_data_dir() if output_dir is None else output_dir)
    path = directory / output
    if path.is_dir():
        raise CkError("--output", output, f"{path} is a directory",
                      "pass a new file name with --output, or another --output_dir")

    splits = _sample(args)
    counts = splits.counts()
    data = encode_dataset_json(splits)
    del splits
    sha256 = hashlib.sha256(data).hexdigest()
    provenance = {
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "arguments": args.as_dict(),
        "data_file": output,
        "sha256": sha256,
        "bytes": int(data.size),
        "counts": counts,
        "numpy_version": np.__version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    try:
        # data first: a crash in between leaves a provenance record whose sha256 no longer matches
        atomic_write_bytes(path, memoryview(data))
        provenance_path = atomic_write_json(provenance_path_for(path), provenance)
    except OSError as exc:
        raise CkError("--output_dir", str(directory), f"cannot be written ({exc.strerror or exc})",
                      "pass a writable directory with --output_dir") from None
    return GenerationResult(path, provenance_path, args, counts, sha256, int(data.size), provenance)


# --------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------


def read_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The provenance record of a dataset; `path` is the data file or its `.provenance.json`.

    Raises CkError when the record is missing or unreadable.
    """
    path = Path(path)
    record_path = path if path.name.endswith(PROVENANCE_SUFFIX) else provenance_path_for(path)
    fix = "regenerate it with `ck generate bit-sequences`"
    if not record_path.exists():
        raise CkError("dataset", str(path), f"has no provenance record ({record_path.name})", fix)
    record = load_json(record_path, "provenance record", fix)
    if not isinstance(record, dict):
        raise CkError("dataset", str(path), f"provenance record {record_path} is not a JSON object", fix)
    return record


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def provenance_matches(path: str | os.PathLike, args: Mapping[str, Any] | Any) -> bool:
    """True when the data file at `path` was written by this generator version from `args`
    and is unchanged since (sha256). `args`: a mapping or object with bit_length, N, val_size,
    bit_parity and optionally p (default 0) and seed (default 42); other keys are ignored.
    Invalid `args` raise CkError.
    """
    def get(name, default=None):
        if isinstance(args, Mapping):
            return args.get(name, default)
        return getattr(args, name, default)

    wanted = validate_arguments(get("bit_length"), get("N"), get("val_size"), get("bit_parity"),
                                get("p", 0.0), get("seed", 42))
    data_path = Path(path)
    if not data_path.is_file():
        return False
    try:
        record = read_provenance(data_path)
    except CkError:
        return False
    if record.get("generator") != GENERATOR_NAME or record.get("generator_version") != GENERATOR_VERSION:
        return False
    try:
        recorded = validate_arguments(**record.get("arguments", {}))
    except (CkError, TypeError):
        return False
    if recorded != wanted:
        return False
    return record.get("sha256") == _file_sha256(data_path)
