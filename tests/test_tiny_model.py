"""The embedded tiny model loads through the same torchtune code as Llama-3.2-1B-Instruct."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_layout_is_a_hugging_face_model_directory(tiny_dir):
    from cruijff_kit.models.tiny import TINY_DIMS

    assert tiny_dir.name == "ck-tiny-llama"
    for name in ("config.json", "model.safetensors", "original/tokenizer.model", "original/special_tokens.json"):
        assert (tiny_dir / name).is_file(), name
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["hidden_size"] == TINY_DIMS["embed_dim"]
    assert config["num_hidden_layers"] == TINY_DIMS["num_layers"]
    assert config["num_attention_heads"] == TINY_DIMS["num_heads"]
    assert config["vocab_size"] == TINY_DIMS["vocab_size"]
    assert config["tie_word_embeddings"] is True
    assert not list(tiny_dir.parent.glob(".ck-tiny-llama.*")), "temporary build directory left behind"


def test_loads_through_full_model_hf_checkpointer_into_the_lora_builder(tiny_dir, tmp_path):
    import torch
    from safetensors.torch import load_file
    from torchtune.training import FullModelHFCheckpointer

    from cruijff_kit.models.tiny import INIT_STD, lora_tiny_llama

    hf_keys = set(load_file(str(tiny_dir / "model.safetensors")))
    assert "model.embed_tokens.weight" in hf_keys and "model.layers.0.self_attn.q_proj.weight" in hf_keys

    checkpointer = FullModelHFCheckpointer(str(tiny_dir), ["model.safetensors"], "LLAMA3_2", str(tmp_path / "out"))
    state = checkpointer.load_checkpoint()["model"]
    model = lora_tiny_llama(["q_proj", "v_proj", "output_proj"], apply_lora_to_mlp=True, lora_rank=8, lora_alpha=16)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert unexpected == []
    assert all("lora" in key for key in missing)
    weights = torch.cat([v.flatten() for k, v in state.items() if v.dim() == 2])
    # the learnable initialisation (key projections are zero, so the std is a little below INIT_STD)
    assert 0.8 * INIT_STD < float(weights.std()) < 1.2 * INIT_STD


def test_tokenizer_has_one_token_per_bit_and_the_llama3_chat_format(tiny_dir):
    from torchtune.data import Message
    from torchtune.models.llama3 import llama3_tokenizer

    from cruijff_kit.models.tiny import SPECIAL_TOKENS, TINY_DIMS

    tok = llama3_tokenizer(str(tiny_dir / "original" / "tokenizer.model"),
                           special_tokens_path=str(tiny_dir / "original" / "special_tokens.json"), max_seq_len=64)
    assert tok.encode("0110100111", add_bos=False, add_eos=False) == [ord(c) for c in "0110100111"]
    assert tok.bos_id == SPECIAL_TOKENS["<|begin_of_text|>"] and tok.eot_id == SPECIAL_TOKENS["<|eot_id|>"]
    tokens, mask = tok.tokenize_messages([Message("user", "0101", masked=True), Message("assistant", "1")])
    assert max(tokens) < TINY_DIMS["vocab_size"]
    text = tok.decode(tokens, truncate_at_eos=False, skip_special_tokens=False)
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n0101<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n1<|eot_id|><|end_of_text|>")
    assert tokens[-3] == ord("1") and mask[-3] is False


def test_build_is_deterministic_and_kept_unless_forced(tmp_path):
    from cruijff_kit.models.tiny import build_tiny_model

    a = build_tiny_model(tmp_path / "a", seed=3)
    b = build_tiny_model(tmp_path / "b", seed=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    before = (a / "model.safetensors").stat().st_mtime_ns
    build_tiny_model(tmp_path / "a", seed=4)
    assert (a / "model.safetensors").stat().st_mtime_ns == before
    build_tiny_model(tmp_path / "a", seed=4, force=True)
    assert (a / "model.safetensors").read_bytes() != (b / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_ck_models_tiny_cli(tmp_path):
    cmd = [sys.executable, "-m", "cruijff_kit", "models", "tiny", "--models-dir", str(tmp_path)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "ck-tiny-llama" / "model.safetensors").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already built" in again.stdout
    helped = subprocess.run([sys.executable, "-m", "cruijff_kit", "models", "tiny", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "--models-dir" in helped.stdout and "--force" in helped.stdout
