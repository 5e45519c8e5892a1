"""Check a Hugging Face model directory against what the rendered finetune.yaml asks torchtune to load.

torchtune builds the model from the registry's builder alone (`lora_llama3_2_1b`: 16 layers, 32 heads, ...),
reads `num_attention_heads`, `num_key_value_heads`, `hidden_size` and `head_dim` from config.json to
convert the weights, loads every tensor by name from the checkpoint files, and builds the tokenizer from
`original/tokenizer.model`. A directory that disagrees fails minutes into a GPU job, or worse, trains a
model other than the one named. `verify_model_dir` finds that beforehand, without torch:

- config.json: model_type and every field of `registry.ARCHITECTURE_FIELDS` equal the builder's;
  torch_dtype one of bfloat16, float16, float32;
- weights: `model.safetensors`, or the shards named by `model.safetensors.index.json`, each present with
  a readable header and not truncated (size >= header + the largest data offset); every tensor the builder
  needs is there with the builder's shape, none it cannot place, all in config.json's torch_dtype;
- `original/tokenizer.model` (+ the special-tokens file for the embedded model): a tiktoken BPE file with
  ranks 0..n-1 that tiktoken builds an encoder from, its special tokens above the ranks and inside the vocab.

Each problem is one `Problem` (file, field, message); `str(problem)` is the line `ck models verify` prints.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from cruijff_kit.errors import CkError
from cruijff_kit.inputs import load_json
from cruijff_kit.models.registry import ARCHITECTURE_FIELDS, MODELS, ModelSpec

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TORCH_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}  # config.json -> safetensors header
DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit
# torchtune's llama3_tokenizer without special_tokens_path: <|begin_of_text|> = 128000 ... 256 special tokens
LLAMA3_SPECIAL_IDS = range(128_000, 128_256)
IGNORED_TENSOR_SUFFIXES = ("rotary_emb.inv_freq",)  # torchtune's hf_to_tune skips these
EXAMPLES = 2  # tensor names quoted in one problem line


@dataclass(frozen=True)
class Problem:
    path: Path
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.field}: {self.message}"


@dataclass
class ModelReport:
    model_dir: Path
    spec: ModelSpec | None                    # the registry entry checked against (None: none matched)
    problems: list[Problem] = field(default_factory=list)
    checkpoint_files: list[str] = field(default_factory=list)
    torch_dtype: str | None = None
    weight_bytes: int = 0
    architecture: dict[str, Any] = field(default_factory=dict)  # what the weights were checked against

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if not self.ok:
            return f"{len(self.problems)} problem(s)"
        arch = self.architecture
        files = self.checkpoint_files
        what = files[0] if len(files) == 1 else f"{len(files)} shards"
        return (f"ok: {self.spec.name} ({arch['num_hidden_layers']} layers, hidden {arch['hidden_size']}, "
                f"{arch['num_attention_heads']}/{arch['num_key_value_heads']} heads, vocab {arch['vocab_size']}), "
                f"{self.torch_dtype}, {what} {self.weight_bytes / 1e9:.2f} GB")


# ------------------------------------------------------------------------------------------ entry points


def verify_model_dir(model_dir: str | Path, spec: ModelSpec | None = None) -> ModelReport:
    """Every problem of `model_dir` against `spec` (default: the registry entry it matches, see `match_spec`)."""
    model_dir = Path(model_dir).expanduser().resolve()
    report = ModelReport(model_dir, spec)
    config_path = model_dir / CONFIG_FILE
    if not model_dir.is_dir():
        report.problems.append(Problem(model_dir, "directory", "does not exist"))
        return report
    config = _read_config(config_path, report.problems)
    if config is None:
        return report
    if spec is None:
        report.spec = spec = match_spec(model_dir, config)
        if spec is None:
            report.problems.append(Problem(config_path, "architecture", "matches no model of the registry "
                                           f"({', '.join(MODELS)}): {_describe(config)}"))
            return report
    _check_config(config_path, config, spec, report.problems)
    report.torch_dtype = config.get("torch_dtype")
    # a spec without a known architecture (a model outside the registry) is checked against its own config.json
    report.architecture = dict(spec.architecture) or {name: _config_value(config, name) for name in ARCHITECTURE_FIELDS}
    _check_weights(model_dir, config, spec, report)
    _check_tokenizer(model_dir, spec, report.architecture.get("vocab_size"), report.problems)
    return report


def match_spec(model_dir: Path, config: dict[str, Any]) -> ModelSpec | None:
    """The registry entry named like the directory, else the first whose architecture config.json has."""
    if model_dir.name in MODELS:
        return MODELS[model_dir.name]
    for spec in MODELS.values():
        if not _architecture_mismatches(config, spec):
            return spec
    return None


def checkpoint_files_for(model_dir: str | Path, spec: ModelSpec) -> list[str]:
    """The weight files torchtune should load: the registry's, or the shards of an index that replaces them."""
    model_dir = Path(model_dir)
    if all((model_dir / name).is_file() for name in spec.checkpoint_files):
        return list(spec.checkpoint_files)
    index = model_dir / INDEX_FILE
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        return sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return list(spec.checkpoint_files)


# ------------------------------------------------------------------------------------------ config.json


def _read_config(path: Path, problems: list[Problem]) -> dict[str, Any] | None:
    if not path.is_file():
        problems.append(Problem(path, "file", "missing; a Hugging Face model directory has config.json at its top"))
        return None
    try:
        config = load_json(path, "config.json")
    except CkError as exc:
        problems.append(Problem(path, "file", exc.problem))
        return None
    if not isinstance(config, dict):
        problems.append(Problem(path, "file", "not a JSON object"))
        return None
    return config


def _same(found: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or isinstance(found, bool):
        return found is expected
    if isinstance(expected, float) and isinstance(found, (int, float)):
        return math.isclose(found, expected, rel_tol=1e-6)
    return type(found) is type(expected) and found == expected


def _config_value(config: dict[str, Any], name: str) -> Any:
    if name == "head_dim" and "head_dim" not in config:  # HF's default when the key is absent
        try:
            return config["hidden_size"] // config["num_attention_heads"]
        except (KeyError, TypeError, ZeroDivisionError):
            return None
    if name == "tie_word_embeddings" and name not in config:
        return False  # transformers' PretrainedConfig default
    return config.get(name)


def _architecture_mismatches(config: dict[str, Any], spec: ModelSpec) -> list[tuple[str, Any, Any]]:
    out = []
    for name, expected in spec.architecture.items():
        found = _config_value(config, name)
        if not _same(found, expected):
            out.append((name, found, expected))
    return out


def _check_config(path: Path, config: dict[str, Any], spec: ModelSpec, problems: list[Problem]) -> None:
    builder = spec.lora_builder.rsplit(".", 1)[-1]
    if config.get("model_type") != "llama":
        problems.append(Problem(path, "model_type", f"{config.get('model_type')!r}, but {spec.name} is loaded "
                                "as a Llama checkpoint (model_type 'llama')"))
    for name, found, expected in _architecture_mismatches(config, spec):
        shown = "missing" if found is None else json.dumps(found)
        problems.append(Problem(path, name, f"{shown}, but {builder} builds {json.dumps(expected)}"))
    if not spec.architecture:
        for name in ARCHITECTURE_FIELDS:
            if _config_value(config, name) is None:
                problems.append(Problem(path, name, f"missing; {builder} needs it to load the weights"))
    dtype = config.get("torch_dtype")
    if dtype not in TORCH_DTYPES:
        problems.append(Problem(path, "torch_dtype", f"{dtype!r}; expected one of {', '.join(TORCH_DTYPES)}"))


def _describe(config: dict[str, Any]) -> str:
    return ", ".join(f"{k} {config.get(k)}" for k in ("num_hidden_layers", "hidden_size", "vocab_size"))


# ------------------------------------------------------------------------------------------ weights


@dataclass
class _Header:
    tensors: dict[str, dict[str, Any]]   # name -> {"dtype", "shape", "data_offsets"}
    size: int


def read_safetensors_header(path: Path) -> _Header:
    """The tensors a safetensors file declares; ValueError saying what is wrong (truncation included)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{size} bytes, too short for a safetensors header")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise ValueError(f"header length {header_len} does not fit in the file's {size} bytes (truncated or "
                             "not a safetensors file)")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    header.pop("__metadata__", None)
    data_end = 0
    for name, info in header.items():
        try:
            begin, end = info["data_offsets"]
            itemsize = DTYPE_BYTES[info["dtype"]]
            count = math.prod(info["shape"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"tensor {name}: malformed entry {info!r}") from None
        if end - begin != count * itemsize:
            raise ValueError(f"tensor {name}: {end - begin} bytes for {info['dtype']} {info['shape']}")
        data_end = max(data_end, end)
    promised = 8 + header_len + data_end
    if size < promised:
        raise ValueError(f"truncated: the header promises {promised} bytes, the file has {size}")
    return _Header(header, size)


def expected_tensor_shapes(spec: ModelSpec | Mapping[str, Any]) -> dict[str, list[int]]:
    """Hugging Face Llama tensor names and shapes of the model the registry's builder makes (or of an
    architecture given as ARCHITECTURE_FIELDS)."""
    a = spec.architecture if isinstance(spec, ModelSpec) else spec
    hidden, inter, vocab = a["hidden_size"], a["intermediate_size"], a["vocab_size"]
    q_dim = a["num_attention_heads"] * a["head_dim"]
    kv_dim = a["num_key_value_heads"] * a["head_dim"]
    shapes = {"model.embed_tokens.weight": [vocab, hidden], "model.norm.weight": [hidden]}
    if not a["tie_word_embeddings"]:
        shapes["lm_head.weight"] = [vocab, hidden]
    for i in range(a["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": [q_dim, hidden], p + "self_attn.k_proj.weight": [kv_dim, hidden],
            p + "self_attn.v_proj.weight": [kv_dim, hidden], p + "self_attn.o_proj.weight": [hidden, q_dim],
            p + "mlp.gate_proj.weight": [inter, hidden], p + "mlp.up_proj.weight": [inter, hidden],
            p + "mlp.down_proj.weight": [hidden, inter],
            p + "input_layernorm.weight": [hidden], p + "post_attention_layernorm.weight": [hidden],
        })
    return shapes


def _examples(names: Iterable[str]) -> str:
    names = sorted(names, key=_natural_key)
    shown = ", ".join(names[:EXAMPLES])
    return shown + (f" and {len(names) - EXAMPLES} more" if len(names) > EXAMPLES else "")


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in name.split(".")]


def _weight_files(model_dir: Path, spec: ModelSpec, problems: list[Problem]) -> tuple[Path, dict[Path, set[str] | None]]:
    """(the file problems about the tensor set are reported against, {weight file: tensors the index puts there})."""
    single = [model_dir / name for name in spec.checkpoint_files]
    index = model_dir / INDEX_FILE
    if all(p.is_file() for p in single) or not index.is_file():
        for p in single:
            if not p.is_file():
                problems.append(Problem(p, "file", f"missing; the run loads its weights from {p.name} "
                                        f"(or shards listed in {INDEX_FILE})"))
        return single[0], {p: None for p in single if p.is_file()}
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError
    except (OSError, UnicodeDecodeError, ValueError):
        problems.append(Problem(index, "file", "not readable JSON"))
        return index, {}
    except (KeyError, TypeError):
        problems.append(Problem(index, "weight_map", "missing or not a map of tensor name -> shard file"))
        return index, {}
    shards: dict[Path, set[str]] = {}
    for tensor, shard in weight_map.items():
        shards.setdefault(model_dir / shard, set()).add(tensor)
    present = {}
    for shard, tensors in sorted(shards.items()):
        if shard.is_file():
            present[shard] = tensors
        else:
            problems.append(Problem(shard, "file", f"missing; {INDEX_FILE} puts {len(tensors)} tensors there "
                                    f"(e.g. {_examples(tensors)})"))
    return index, present


def _check_weights(model_dir: Path, config: dict[str, Any], spec: ModelSpec, report: ModelReport) -> None:
    problems = report.problems
    before = len(problems)
    where, files = _weight_files(model_dir, spec, problems)
    report.checkpoint_files = [p.name for p in files]
    found: dict[str, dict[str, Any]] = {}
    unreadable = len(problems) > before  # a missing file: its tensors' absence is no news
    for path, indexed in files.items():
        try:
            header = read_safetensors_header(path)
        except (OSError, ValueError) as exc:
            problems.append(Problem(path, "safetensors", str(exc)))
            unreadable = True
            continue
        report.weight_bytes += header.size
        if indexed is not None and indexed - header.tensors.keys():
            problems.append(Problem(path, "tensors", f"{INDEX_FILE} puts tensors here that the file lacks: "
                                    f"{_examples(indexed - header.tensors.keys())}"))
        found.update(header.tensors)
    if unreadable or not files or any(v is None for v in report.architecture.values()):
        return
    expected = expected_tensor_shapes(report.architecture)
    builder = spec.lora_builder.rsplit(".", 1)[-1]
    present = {k: v for k, v in found.items() if not k.endswith(IGNORED_TENSOR_SUFFIXES)}
    missing = expected.keys() - present.keys()
    unexpected = present.keys() - expected.keys()
    wrong_shape = [k for k in expected.keys() & present.keys() if list(present[k]["shape"]) != expected[k]]
    if missing:
        problems.append(Problem(where, "tensors", f"{len(missing)} tensors that {builder} needs are missing: "
                                f"{_examples(missing)}"))
    if unexpected:
        problems.append(Problem(where, "tensors", f"{len(unexpected)} tensors {builder} has no place for: "
                                f"{_examples(unexpected)}"))
    if wrong_shape:
        first = sorted(wrong_shape, key=_natural_key)[0]
        problems.append(Problem(where, "shape", f"{len(wrong_shape)} tensors have another shape than {builder}'s, "
                                f"e.g. {first} {present[first]['shape']} instead of {expected[first]}"))
    want = TORCH_DTYPES.get(config.get("torch_dtype"))
    if want is not None:
        other = [k for k, v in present.items() if v["dtype"] != want]
        if other:
            kinds = sorted({present[k]["dtype"] for k in other})
            problems.append(Problem(where, "dtype", f"{len(other)} tensors are {'/'.join(kinds)}, config.json "
                                    f"torch_dtype is {config['torch_dtype']} ({want}): e.g. {_examples(other)}"))


# ------------------------------------------------------------------------------------------ tokenizer


def read_bpe_ranks(path: Path) -> dict[bytes, int]:
    """A tiktoken BPE file ("<base64 token> <rank>" per line); ValueError naming the first bad line."""
    ranks: dict[bytes, int] = {}
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except (ValueError, binascii.Error):
                raise ValueError(f"line {number} is not '<base64 token> <rank>'") from None
    if not ranks:
        raise ValueError("no tokens")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"the ranks of its {len(ranks)} tokens are not 0..{len(ranks) - 1} without repeats")
    return ranks


def _special_ids(model_dir: Path, spec: ModelSpec, problems: list[Problem]) -> list[int] | None:
    if spec.special_tokens_file is None:
        return list(LLAMA3_SPECIAL_IDS)
    path = model_dir / spec.special_tokens_file
    try:
        added = json.loads(path.read_text())["added_tokens"]
        return [int(t["id"]) for t in added]
    except FileNotFoundError:
        problems.append(Problem(path, "file", "missing; the tokenizer reads its special tokens from it"))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        problems.append(Problem(path, "added_tokens", "not a tokenizer.json-style list of {id, content}"))
    return None


def _check_tokenizer(model_dir: Path, spec: ModelSpec, vocab: int | None, problems: list[Problem]) -> None:
    path = model_dir / spec.tokenizer_file
    if not path.is_file():
        problems.append(Problem(path, "file", "missing; torchtune's llama3_tokenizer loads it (Meta's original "
                                "tokenizer file, in the model repository's original/ folder)"))
        return
    try:
        ranks = read_bpe_ranks(path)
        _build_encoder(ranks)
    except (OSError, ValueError) as exc:
        problems.append(Problem(path, "tokenizer", f"not loadable: {exc}"))
        return
    specials = _special_ids(model_dir, spec, problems)
    if specials is None or not isinstance(vocab, int):
        return
    if min(specials) < len(ranks):
        problems.append(Problem(path, "tokens", f"{len(ranks)} BPE tokens overlap the special tokens from id "
                                f"{min(specials)}; this is not the tokenizer of {spec.name}"))
    if max(specials) >= vocab or len(ranks) > vocab:
        problems.append(Problem(path, "tokens", f"ids up to {max(max(specials), len(ranks) - 1)} do not fit the "
                                f"model's vocab_size {vocab}"))


def _build_encoder(ranks: dict[bytes, int]) -> None:
    """What torchtune's TikTokenBaseTokenizer does with the file: tiktoken refuses inconsistent ranks."""
    import tiktoken

    try:
        tiktoken.Encoding(name="ck-verify", pat_str=r"\S+|\s+", mergeable_ranks=ranks, special_tokens={})
    except Exception as exc:
        raise ValueError(f"tiktoken cannot build an encoder from it ({exc})") from None
