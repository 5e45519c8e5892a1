"""`ck models verify` / `ck models list` and design's VERIFY_MODEL: a model directory against the builder.

Planted faults use copies of the embedded tiny model (kilobytes) and a Llama-3.2-1B directory whose
2.5 GB safetensors file is sparse (a real header, zero data: verification reads headers and sizes only).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml

from cruijff_kit.cli import main
from cruijff_kit.models.random_init import LLAMA_3_2_1B_INSTRUCT_CONFIG, SEED_MODEL, llama3_tokenizer_file, safetensors_header
from cruijff_kit.models.registry import MODELS
from cruijff_kit.run_config import resolve
from cruijff_kit.tools.torchtune.setup_finetune import render_finetune_yaml
from cruijff_kit.models.verify import INDEX_FILE, checkpoint_files_for, expected_tensor_shapes, verify_model_dir

TINY = "ck-tiny-llama"


@pytest.fixture
def tiny(tiny_dir, tmp_path):
    """A fresh copy of the tiny model to plant a fault in."""
    return shutil.copytree(tiny_dir, tmp_path / "models" / TINY)


@pytest.fixture
def sparse_seed(tmp_path):
    """Llama-3.2-1B-Instruct with the real config.json and tokenizer and a sparse model.safetensors."""
    model_dir = tmp_path / "models" / SEED_MODEL
    (model_dir / "original").mkdir(parents=True)
    (model_dir / "config.json").write_text(json.dumps(LLAMA_3_2_1B_INSTRUCT_CONFIG))
    shutil.copyfile(llama3_tokenizer_file(), model_dir / "original" / "tokenizer.model")
    head, data_bytes = safetensors_header(expected_tensor_shapes(MODELS[SEED_MODEL]), "bfloat16")
    with (model_dir / "model.safetensors").open("wb") as f:
        f.write(head)
        f.truncate(len(head) + data_bytes)
    return model_dir


def verify_lines(model_dir, capsys, *extra) -> tuple[int, list[str]]:
    code = main(["models", "verify", str(model_dir), *extra])
    captured = capsys.readouterr()
    return code, captured.err.splitlines() if code else captured.out.splitlines()


def edit_config(model_dir, **changes):
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


# ------------------------------------------------------------------------------------------ the registry


@pytest.mark.parametrize("name", list(MODELS))
def test_registry_architecture_is_the_builders(name):
    """The numbers verify checks config.json against are those of the builder the renderer names."""
    import torch
    from torchtune.config._utils import _get_component_from_path
    from torchtune.modules import TiedLinear

    spec = MODELS[name]
    with torch.device("meta"):
        model = _get_component_from_path(spec.lora_builder)(lora_attn_modules=["q_proj", "v_proj"])
    a = spec.architecture
    attn = model.layers[0].attn
    assert len(model.layers) == a["num_hidden_layers"]
    assert tuple(model.tok_embeddings.weight.shape) == (a["vocab_size"], a["hidden_size"])
    assert (attn.num_heads, attn.num_kv_heads, attn.head_dim) == (
        a["num_attention_heads"], a["num_key_value_heads"], a["head_dim"])
    assert model.layers[0].mlp.w1.out_features == a["intermediate_size"]
    assert isinstance(model.output, TiedLinear) is a["tie_word_embeddings"]
    assert attn.pos_embeddings.base == a["rope_theta"]
    assert model.layers[0].sa_norm.eps == a["rms_norm_eps"]


def test_expected_tensors_are_the_hf_names_of_the_builders_weights():
    import torch
    from torchtune.models.convert_weights import tune_to_hf
    from torchtune.models.llama3_2 import llama3_2_1b

    a = MODELS[SEED_MODEL].architecture
    with torch.device("meta"):
        model = llama3_2_1b()
    hf = tune_to_hf(model.state_dict(), num_heads=a["num_attention_heads"], num_kv_heads=a["num_key_value_heads"],
                    dim=a["hidden_size"], head_dim=a["head_dim"])
    hf.pop("lm_head.weight", None)  # tied: torchtune's TiedLinear owns no weight of its own
    assert {k: list(v.shape) for k, v in hf.items()} == expected_tensor_shapes(MODELS[SEED_MODEL])


# ------------------------------------------------------------------------------------------ accepted


def test_the_tiny_model_and_the_seed_model_layout_pass(tiny, sparse_seed, capsys):
    assert verify_lines(tiny, capsys) == (0, [f"{tiny}: ok: {TINY} (2 layers, hidden 128, 8/8 heads, vocab 320), "
                                               f"float32, model.safetensors {(tiny / 'model.safetensors').stat().st_size / 1e9:.2f} GB"])
    code, out = verify_lines(sparse_seed, capsys)
    assert code == 0 and "ok: Llama-3.2-1B-Instruct (16 layers, hidden 2048, 32/8 heads, vocab 128256), bfloat16" in out[0]


def test_a_directory_of_another_name_is_matched_by_its_architecture(tiny):
    assert checkpoint_files_for(tiny, MODELS[TINY]) == ["model.safetensors"]
    renamed = tiny.rename(tiny.parent / "my-copy")
    report = verify_model_dir(renamed)
    assert report.ok and report.spec.name == TINY


def test_a_sharded_checkpoint_with_its_index_passes(tiny, capsys):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tiny / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(tiny / shard))
    (tiny / INDEX_FILE).write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}))
    (tiny / "model.safetensors").unlink()
    report = verify_model_dir(tiny)
    assert report.ok and report.checkpoint_files == sorted(shards)
    assert checkpoint_files_for(tiny, MODELS[TINY]) == sorted(shards)  # what the renderer lists
    rendered = yaml.safe_load(render_finetune_yaml(resolve({"model": str(tiny), "dataset_label": "d", "my_wandb_project": "p"}, tiny.parent)))
    assert rendered["checkpointer"]["checkpoint_files"] == sorted(shards)
    # and torchtune's own checkpointer loads the shards back into one state dict
    from torchtune.training import FullModelHFCheckpointer

    checkpointer = FullModelHFCheckpointer(checkpoint_dir=str(tiny), checkpoint_files=sorted(shards),
                                           model_type="LLAMA3", output_dir=str(tiny.parent / "out"))
    assert len(checkpointer.load_checkpoint()["model"]) == len(tensors)

    (tiny / "model-00002-of-00002.safetensors").unlink()
    code, lines = verify_lines(tiny, capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"{tiny}/model-00002-of-00002.safetensors: file: missing; {INDEX_FILE} puts")


# ------------------------------------------------------------------------------------------ planted faults


def test_missing_tokenizer(tiny, capsys):
    (tiny / "original" / "tokenizer.model").unlink()
    code, lines = verify_lines(tiny, capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"{tiny}/original/tokenizer.model: file: missing")


def test_wrong_layer_count_in_config(sparse_seed, capsys):
    edit_config(sparse_seed, num_hidden_layers=15)
    code, lines = verify_lines(sparse_seed, capsys)
    assert (code, lines) == (2, [f"{sparse_seed}/config.json: num_hidden_layers: 15, but lora_llama3_2_1b builds 16"])


@pytest.mark.parametrize("field, value", [("num_key_value_heads", 32), ("hidden_size", 4096),
                                          ("vocab_size", 128000), ("tie_word_embeddings", False),
                                          ("rope_theta", 10000.0), ("intermediate_size", 8191)])
def test_each_architecture_field_is_checked(sparse_seed, capsys, field, value):
    edit_config(sparse_seed, **{field: value})
    code, lines = verify_lines(sparse_seed, capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"{sparse_seed}/config.json: {field}: {json.dumps(value)}, but lora_llama3_2_1b builds")


def test_truncated_safetensors(sparse_seed, capsys):
    weights = sparse_seed / "model.safetensors"
    size = weights.stat().st_size
    os.truncate(weights, size - 1)
    code, lines = verify_lines(sparse_seed, capsys)
    assert (code, lines) == (2, [f"{weights}: safetensors: truncated: the header promises {size} bytes, "
                                 f"the file has {size - 1}"])
    os.truncate(weights, 1000)  # cut inside the header
    code, lines = verify_lines(sparse_seed, capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"{weights}: safetensors: header length")


def test_weights_of_another_architecture(tiny, capsys):
    """A config.json that claims the right architecture over weights that are not: the tensors say so."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tiny / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()  # not tied
    tensors["model.norm.weight"] = tensors["model.norm.weight"][:64].clone()
    save_file(tensors, str(tiny / "model.safetensors"))
    code, lines = verify_lines(tiny, capsys)
    assert code == 2
    assert [line.split(": ")[1] for line in lines] == ["tensors", "tensors", "shape"]
    assert "1 tensors that lora_tiny_llama needs are missing: model.layers.1.mlp.up_proj.weight" in lines[0]
    assert "lm_head.weight" in lines[1]
    assert "model.norm.weight [64] instead of [128]" in lines[2]


def test_dtype_disagreeing_with_config(tiny, capsys):
    edit_config(tiny, torch_dtype="bfloat16")
    code, lines = verify_lines(tiny, capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"{tiny}/model.safetensors: dtype: ") and "torch_dtype is bfloat16 (BF16)" in lines[0]
    edit_config(tiny, torch_dtype="int8")
    code, lines = verify_lines(tiny, capsys)
    assert lines[0] == f"{tiny}/config.json: torch_dtype: 'int8'; expected one of bfloat16, float16, float32"


def test_unloadable_tokenizer(tiny, capsys):
    path = tiny / "original" / "tokenizer.model"
    path.write_text(path.read_text() + "not-base64! 999\n")
    code, lines = verify_lines(tiny, capsys)
    assert (code, len(lines)) == (2, 1) and lines[0].startswith(f"{path}: tokenizer: not loadable: line ")


def test_another_models_tokenizer(tiny, capsys):
    path = tiny / "original" / "tokenizer.model"
    shutil.copyfile(llama3_tokenizer_file(), path)  # Llama 3's 128,000 ranks in a model of vocab 320
    code, lines = verify_lines(tiny, capsys)
    assert code == 2 and [line.split(": ")[1] for line in lines] == ["tokens", "tokens"]
    assert "overlap the special tokens" in lines[0] and "do not fit the model's vocab_size 320" in lines[1]


def test_missing_config_and_missing_directory(tiny, tmp_path, capsys):
    (tiny / "config.json").unlink()
    code, lines = verify_lines(tiny, capsys)
    assert (code, len(lines)) == (2, 1) and lines[0].startswith(f"{tiny}/config.json: file: missing")
    assert main(["models", "verify", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_model_flag_checks_against_the_named_entry(tiny, capsys):
    code, lines = verify_lines(tiny, capsys, "--model", SEED_MODEL)
    assert code == 2 and any("num_hidden_layers: 2, but lora_llama3_2_1b builds 16" in line for line in lines)


def test_a_model_outside_the_registry_is_checked_against_its_own_config(tiny):
    """A spec with no known architecture (e.g. a model directory given by path): weights vs config.json."""
    import dataclasses

    spec = dataclasses.replace(MODELS[TINY], name="my-model", architecture={})
    report = verify_model_dir(tiny, spec)
    assert report.ok and report.architecture["num_hidden_layers"] == 2
    edit_config(tiny, intermediate_size=256)
    problems = [str(p) for p in verify_model_dir(tiny, spec).problems]
    assert len(problems) == 1 and "model.layers.0.mlp.down_proj.weight [128, 512] instead of [128, 256]" in problems[0]
    edit_config(tiny, intermediate_size=None)
    problems = [str(p) for p in verify_model_dir(tiny, spec).problems]
    assert problems == [f"{tiny}/config.json: intermediate_size: missing; lora_tiny_llama needs it to load the weights"]


# ------------------------------------------------------------------------------------------ list and design


def test_list_shows_each_directory_and_its_registry_model(tiny, capsys):
    shutil.copytree(tiny, tiny.parent / "my-tiny")
    broken = shutil.copytree(tiny, tiny.parent / "broken")
    (broken / "original" / "tokenizer.model").unlink()
    assert main(["models", "list", "--models-dir", str(tiny.parent)]) == 0
    rows = {line.split()[0]: line.split()[1:3] for line in capsys.readouterr().out.splitlines()[2:5]}
    assert rows == {"broken": [TINY, "1"], "ck-tiny-llama": [TINY, "ok"], "my-tiny": [TINY, "ok"]}


def test_design_refuses_a_model_directory_that_fails_verification(tiny, tmp_path, capsys):
    edit_config(tiny, num_hidden_layers=3)
    code = main(["design", "bit-sequences", "--preset", "embedded", "--name", "broken_model", "--yes",
                 "--scratch", str(tmp_path / "scratch"), "--models-dir", str(tiny.parent),
                 "--data-dir", str(tmp_path / "data")])
    assert code == 2
    assert f"{tiny}/config.json: num_hidden_layers: 3, but lora_tiny_llama builds 2" in capsys.readouterr().err
    assert not (tmp_path / "scratch" / "ck-sanity-checks" / "broken_model").exists()


def _design_args(tmp_path, model) -> list[str]:
    return ["design", "bit-sequences", "--preset", "embedded", "--model", str(model), "--yes", "--name", "anywhere",
            "--scratch", str(tmp_path / "scratch"), "--data-dir", str(tmp_path / "data"),
            "--epochs", "1", "--max-steps-per-epoch", "3"]


@pytest.mark.training
def test_a_model_directory_anywhere_on_disk_designs_scaffolds_and_runs(tiny_dir, tmp_path, capsys):
    """A downloaded model lives where the user put it, under any folder name: its absolute path is the
    run's model; config.json picks the builder; design, scaffold and the recipe all use that directory."""
    from cruijff_kit.experiment import Experiment
    from cruijff_kit.monitor import run_experiment

    model = shutil.copytree(tiny_dir, tmp_path / "downloads" / "my-small-llama")
    assert main(_design_args(tmp_path, model)) == 0
    exp_dir = tmp_path / "scratch" / "ck-sanity-checks" / "anywhere"
    assert {run.model for run in Experiment.load(exp_dir).runs} == {str(model)}
    assert main(["scaffold", str(exp_dir)]) == 0
    assert not (tmp_path / "scratch" / "models").exists()  # nothing built or looked for under models_dir
    finetune = (exp_dir / "parity_run" / "finetune.yaml").read_text()
    assert f"checkpoint_dir: {model}" in finetune and f"path: {model}/original/tokenizer.model" in finetune
    states = run_experiment(exp_dir, executor="local", poll=0.5, live=False)
    assert set(states.values()) == {"COMPLETED"}, states


def test_a_model_directory_of_no_supported_architecture_is_refused_at_design(tiny_dir, tmp_path, capsys):
    model = shutil.copytree(tiny_dir, tmp_path / "downloads" / "odd-model")
    edit_config(model, num_hidden_layers=7)
    assert main(_design_args(tmp_path, model)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "VERIFY_MODEL" in err[0] and "num_hidden_layers" in err[0] and str(model) in err[0]
    assert not (tmp_path / "scratch" / "ck-sanity-checks" / "anywhere").exists()
