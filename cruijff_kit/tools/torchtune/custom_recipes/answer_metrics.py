"""Answer-token metrics: cross-entropy and accuracy at the first token of the assistant's reply.

For a classification fine-tune ("0101" -> "1") the answer token is what the model is being taught;
torchtune's `loss` averages over every label token (with train_on_input, the input bits and the chat
template too), so it says little about the answer. The answer token is found from the tokens
themselves: it is the token right after the last assistant header, the exact ids the model
tokenizer emits for `<|start_header_id|>assistant<|end_header_id|>\\n\\n` (one id for "assistant"
with the Llama-3 tokenizer, nine byte ids with the tiny one). This works whether or not the input
is masked, and for any tokenizer that exposes torchtune's `_tokenize_header`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def answer_positions(tokens: torch.Tensor, header: torch.Tensor) -> torch.Tensor:
    """Index of the answer token in each row of `tokens` [b, s], or -1 where there is none.

    The answer token is the one right after the row's last occurrence of `header`.
    """
    b, s = tokens.shape
    h = header.numel()
    if s <= h:
        return torch.full((b,), -1, dtype=torch.long, device=tokens.device)
    windows = tokens.unfold(1, h, 1)  # [b, s - h + 1, h]
    match = (windows == header.to(tokens.device)).all(dim=-1)
    starts = torch.arange(match.size(1), device=tokens.device).expand_as(match)
    last_start = torch.where(match, starts, torch.full_like(starts, -1)).max(dim=1).values
    pos = last_start + h
    return torch.where((last_start >= 0) & (pos < s), pos, torch.full_like(pos, -1))


def logits_at(logits: torch.Tensor | list[torch.Tensor], rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """logits[rows, cols, :] for a [b, s, v] tensor or a list of sequence chunks (chunked-output models)."""
    if isinstance(logits, torch.Tensor):
        return logits[rows, cols]
    # torchtune's chunks have equal length except the last; visit only the chunks that hold answers
    chunk_len = logits[0].size(1)
    chunk_of = torch.div(cols, chunk_len, rounding_mode="floor")
    if rows.numel() and int(chunk_of.max()) >= len(logits):
        raise ValueError("answer positions fall outside the logits")
    out = logits[0].new_empty((rows.numel(), logits[0].size(-1)))
    for c in torch.unique(chunk_of).tolist():
        inside = chunk_of == c
        out[inside] = logits[c][rows[inside], cols[inside] - c * chunk_len]
    return out


@dataclass
class AnswerResults:
    """Per-row answer-token results of one batch (rows without an answer token are left out)."""

    rows: torch.Tensor        # row index in the batch
    loss: torch.Tensor        # cross-entropy at the answer token, nats, float32
    predicted: torch.Tensor   # argmax token id
    target: torch.Tensor      # the answer token id (the label)

    @property
    def correct(self) -> torch.Tensor:
        return self.predicted == self.target


def answer_results(logits, tokens: torch.Tensor, header: torch.Tensor) -> AnswerResults:
    """Cross-entropy and argmax at the answer token of each row; `logits` predict token t+1 at t."""
    pos = answer_positions(tokens, header)
    rows = torch.nonzero(pos >= 0).squeeze(-1)
    cols = pos[rows]
    with torch.no_grad():
        answer_logits = logits_at(logits, rows, cols - 1).float()
        target = tokens[rows, cols]
        loss = F.cross_entropy(answer_logits, target, reduction="none")
        predicted = answer_logits.argmax(dim=-1)
    return AnswerResults(rows=rows, loss=loss, predicted=predicted, target=target)


@dataclass
class AnswerMeter:
    """Running sums of answer-token loss and accuracy; `mean()` then `reset()` per logging window."""

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    _pending: list = field(default_factory=list)

    def update(self, results: AnswerResults) -> None:
        # kept as tensors until read, so a CUDA run does not synchronise on every batch
        self._pending.append((results.loss.sum(), results.correct.sum(), results.loss.numel()))

    def _flush(self) -> None:
        for loss_sum, correct, count in self._pending:
            self.loss_sum += float(loss_sum)
            self.correct += int(correct)
            self.count += int(count)
        self._pending.clear()

    def sums(self) -> tuple[float, int, int]:
        """(summed answer loss in nats, correct answers, answers)."""
        self._flush()
        return self.loss_sum, self.correct, self.count

    def mean(self) -> tuple[float, float, int]:
        """(mean answer loss in nats, answer accuracy, number of answers); NaNs when empty."""
        self._flush()
        if self.count == 0:
            return float("nan"), float("nan"), 0
        return self.loss_sum / self.count, self.correct / self.count, self.count

    def reset(self) -> None:
        self.loss_sum, self.correct, self.count = 0.0, 0, 0
        self._pending.clear()
