"""The answer-token metrics on Meta's real Llama 3 tokenizer (from the `llama-models` package).

The embedded model's byte-level tokenizer is what every other test uses; the seed's model tokenizes the
chat template and the bits differently (128,256 ids, digits merged in threes, one id per header word). The
answer token must still be the label: found right after the assistant header, a label token whether or
not the input is trained on, and the whole label (one token, then <|eot_id|>), so the answer-token loss is
the label's loss and the Bernoulli floor H(p) is unchanged by tokenization.
"""

from __future__ import annotations

import json

import pytest
import torch

from cruijff_kit.models.random_init import llama3_tokenizer_file
from cruijff_kit.tools.torchtune.custom_recipes.answer_metrics import answer_positions, answer_results
from cruijff_kit.tools.torchtune.custom_recipes.torchtune_layer import assistant_header_ids

BITS = ["0", "1", "01", "110", "1011", "000000000000000", "101010101010101", "0110100110010110111"]


@pytest.fixture(scope="module")
def tokenizer():
    from torchtune.models.llama3 import llama3_tokenizer

    return llama3_tokenizer(str(llama3_tokenizer_file()))


def _sft_batch(tokenizer, rows, train_on_input, tmp_path):
    """Rows through torchtune's instruct_dataset and padded_collate_sft, as the recipe gets them."""
    from torchtune.data import padded_collate_sft
    from torchtune.datasets import instruct_dataset

    path = tmp_path / f"rows_{train_on_input}.json"
    path.write_text(json.dumps({"train": [{"input": i, "output": o} for i, o in rows]}))
    ds = instruct_dataset(tokenizer, source="json", data_files=str(path), field="train", split="train",
                          column_map={"input": "input", "output": "output"}, train_on_input=train_on_input)
    return padded_collate_sft([ds[k] for k in range(len(ds))], padding_idx=tokenizer.pad_id)


def test_the_real_tokenizer_is_the_seed_models(tokenizer):
    assert tokenizer.vocab_size == 128_257  # 128,000 BPE ranks + 256 special tokens + the pad id torchtune adds
    header = assistant_header_ids(tokenizer)
    assert header[0] == tokenizer.special_tokens["<|start_header_id|>"]
    assert header[2] == tokenizer.special_tokens["<|end_header_id|>"]
    assert len(header) == 4  # <|start_header_id|> assistant <|end_header_id|> \n\n


def test_each_label_is_one_token_of_its_own(tokenizer):
    zero = tokenizer.encode("0", add_bos=False, add_eos=False)
    one = tokenizer.encode("1", add_bos=False, add_eos=False)
    assert len(zero) == len(one) == 1 and zero != one


@pytest.mark.parametrize("train_on_input", [True, False])
def test_the_answer_token_is_the_label_after_the_assistant_header(tokenizer, train_on_input, tmp_path):
    rows = [(bits, label) for bits in BITS for label in ("0", "1")]
    batch = _sft_batch(tokenizer, rows, train_on_input, tmp_path)
    tokens, labels = batch["tokens"], batch["labels"]
    header = torch.tensor(assistant_header_ids(tokenizer))
    pos = answer_positions(tokens, header)
    assert (pos >= 0).all()
    label_ids = {lab: tokenizer.encode(lab, add_bos=False, add_eos=False)[0] for lab in ("0", "1")}
    eot = tokenizer.special_tokens["<|eot_id|>"]
    rows_idx = torch.arange(len(rows))
    assert tokens[rows_idx, pos].tolist() == [label_ids[lab] for _, lab in rows]
    assert tokens[rows_idx, pos + 1].tolist() == [eot] * len(rows)  # the label is the whole answer
    # the answer is a label token (trained on) in both settings; the input bits only with train_on_input
    assert labels[rows_idx, pos].tolist() == tokens[rows_idx, pos].tolist()
    first_input = torch.tensor([5] * len(rows))  # <|begin_of_text|> <|start_header_id|> user <|end_header_id|> \n\n bits
    assert (labels[rows_idx, first_input] != -100).all().item() is train_on_input


@pytest.mark.parametrize("train_on_input", [True, False])
def test_answer_loss_and_accuracy_read_the_label_position(tokenizer, train_on_input, tmp_path):
    rows = [("1011", "1"), ("000000000000000", "0"), ("110", "1")]
    batch = _sft_batch(tokenizer, rows, train_on_input, tmp_path)
    tokens = batch["tokens"]
    header = torch.tensor(assistant_header_ids(tokenizer))
    b, s = tokens.shape
    vocab = tokenizer.vocab_size
    one = tokenizer.encode("1", add_bos=False, add_eos=False)[0]
    zero = tokenizer.encode("0", add_bos=False, add_eos=False)[0]
    # logits that predict "1" with probability 0.75 and "0" with 0.25 everywhere: a Bernoulli(0.75) model
    logits = torch.full((b, s, vocab), -1e4)
    logits[..., one] = torch.log(torch.tensor(0.75))
    logits[..., zero] = torch.log(torch.tensor(0.25))
    results = answer_results(logits, tokens, header)
    assert results.rows.tolist() == [0, 1, 2]
    assert results.target.tolist() == [one, zero, one]
    assert results.predicted.tolist() == [one, one, one]
    expected = torch.tensor([-torch.log(torch.tensor(0.75)), -torch.log(torch.tensor(0.25)), -torch.log(torch.tensor(0.75))])
    assert torch.allclose(results.loss, expected, atol=1e-5)
    # the same through torchtune's chunked output (a list of sequence chunks), as the recipe computes it
    chunked = answer_results(list(logits.chunk(8, dim=1)), tokens, header)
    assert torch.equal(chunked.loss, results.loss)
