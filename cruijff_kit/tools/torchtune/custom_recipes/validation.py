"""Validation, answer-token metrics and metrics.jsonl: the part both of our LoRA recipes share.

`ValidatingRecipe` is a mixin placed before a stock torchtune recipe class in the bases:

    class LoRAFinetuneRecipeSingleDeviceVal(ValidatingRecipe, stock.LoRAFinetuneRecipeSingleDevice)
    class LoRAFinetuneRecipeDistributedVal(ValidatingRecipe, stock.LoRAFinetuneRecipeDistributed)

The stock `train()` loop runs as torchtune wrote it. We hear from it in three places:

- a forward hook on the model (`AnswerTap`) computes the answer-token loss and argmax of every batch from the
  logits the loop already made (no second forward pass, no extra sync);
- the profiler's `step()`, which the stock loops call after each batch (single device) or optimizer step
  (distributed), is wrapped (`StepHook`): when an optimizer step has just completed, it adds the answer-token
  metrics to the train row the stock loop logged and runs validation when it is due;
- `save_checkpoint` (end of every epoch) applies `epochs_to_save`, and `train()` ends with the final
  validation and the "end" event.

Across processes (the distributed recipe), validation rows are split between ranks (strided), every
figure is a sum or a count all_reduced over them (`Ranks`), so the result equals one process evaluating all
rows; only rank 0 writes metrics.jsonl, the metric logger, val_predictions.jsonl and checkpoints.
What we take from torchtune for this is in torchtune_layer.py.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig, ListConfig
from torch.utils.data import DataLoader, Subset
from torchtune import config, training, utils

from cruijff_kit.errors import CkError
from cruijff_kit.run_config import FINETUNE_TOP_LEVEL_KEYS, check_finetune_config
from cruijff_kit.fsutil import atomic_write_text
from cruijff_kit.tools.torchtune.custom_recipes.answer_metrics import AnswerMeter, AnswerResults, answer_results
from cruijff_kit.tools.torchtune.custom_recipes.torchtune_layer import (
    assistant_header_ids,
    collate_function,
    raw_rows,
    recipe_state_file,
)

log = utils.get_logger("INFO")

# top-level finetune.yaml keys both stock LoRA recipes read; each recipe adds its own (STOCK_KEYS there)
COMMON_STOCK_KEYS = frozenset({
    "output_dir", "model", "tokenizer", "checkpointer", "resume_from_checkpoint", "save_adapter_weights_only",
    "dataset", "seed", "shuffle", "batch_size", "optimizer", "lr_scheduler", "loss", "epochs",
    "max_steps_per_epoch", "gradient_accumulation_steps", "clip_grad_norm", "compile", "metric_logger",
    "log_every_n_steps", "log_peak_memory_stats", "device", "dtype", "enable_activation_checkpointing",
    "enable_activation_offloading", "profiler", "collate_fn", "cudnn_deterministic_mode",
})
# cruijff_kit's additions (docs/finetune_reference.yaml, "cruijff_kit recipe additions")
VAL_KEYS = frozenset({
    "dataset_val", "run_val_every_n_steps", "batch_size_val", "max_val_batches", "epochs_to_save",
    "num_threads", "metrics_log", "early_stop_after", "early_stop_accuracy",
}) | FINETUNE_TOP_LEVEL_KEYS
DEFAULT_BATCH_SIZE_VAL = 64
# Output chunking (CEWithChunkedOutputLoss) saves memory when one batch's fp32 logits are large (Llama-3's
# 128k vocabulary); below this size it only adds work (about 5 % of a step on the embedded model).
FULL_LOGITS_MAX_BYTES = 256 * 2**20
RECIPE_STATE = recipe_state_file()
EPOCH_DIR = re.compile(r"^epoch_(\d+)$")


class EarlyStop(Exception):
    """Raised from the step hook to leave torchtune's loop once the held-out target has held (early_stop_after)."""


# ---------------------------------------------------------------- configuration


def check_config(cfg: DictConfig, stock_keys: frozenset[str]) -> None:
    """Reject unknown top-level keys and malformed validation settings before any heavy work."""
    check_finetune_config(cfg)  # the run contract (cruijff_kit/run_config.py): the same errors as at scaffold time
    unknown = sorted(set(cfg.keys()) - stock_keys - VAL_KEYS)
    if unknown:
        raise CkError("finetune.yaml", unknown, "unknown config keys",
                      "remove them or fix their spelling (see docs/finetune_reference.yaml)")
    if (cfg.get("run_val_every_n_steps") or 0) > 0 and cfg.get("dataset_val") is None:
        raise CkError("dataset_val", None, "missing while run_val_every_n_steps > 0",
                      "add a dataset_val section or set run_val_every_n_steps: 0")
    parse_epochs_to_save(cfg.get("epochs_to_save"), cfg.epochs)


def parse_epochs_to_save(value, total_epochs: int) -> set[int]:
    """0-based epochs whose checkpoint is written; the last epoch is always included."""
    if value is None or value == "all":
        return set(range(total_epochs))
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple, ListConfig)) or not all(
        isinstance(e, int) and not isinstance(e, bool) and 0 <= e < total_epochs for e in value
    ):
        raise CkError("epochs_to_save", value, f"must be 'all', null or a list of epochs in 0..{total_epochs - 1}",
                      "e.g. epochs_to_save: [0, 4] (the last epoch is always saved)")
    return set(value) | {total_epochs - 1}


def set_cpu_threads(cfg: DictConfig) -> None:
    """`num_threads` (default 1) torch CPU threads: more than one collapses on a loaded small machine."""
    threads = cfg.get("num_threads", 1)
    if cfg.get("device", "cpu") == "cpu" and threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(threads))
        torch.set_num_threads(threads)


def check_resume_checkpoint(output_dir: str | os.PathLike) -> None:
    """Before a resume: the newest epoch_<k>/ and recipe_state.pt must come from the same finished save.

    torchtune writes both in place, the recipe state last (and only for epochs before the last), so a job
    killed while saving leaves a truncated file, which torchtune reports as "Unable to load checkpoint", or
    an epoch_<k>/ newer than the recipe state, whose weights it would resume with the previous epoch's
    optimizer state and epoch count.
    """
    out = Path(output_dir)
    epochs = sorted(int(m.group(1)) for p in (out.iterdir() if out.is_dir() else ())
                    if (m := EPOCH_DIR.match(p.name)) and p.is_dir())
    state_path = out / RECIPE_STATE
    try:
        epochs_run = int(torch.load(state_path, map_location="cpu", weights_only=True, mmap=True)[training.EPOCHS_KEY])
    except Exception:  # missing, truncated or foreign: said below
        epochs_run = None
    start_over = "set resume_from_checkpoint: False to train from the start"
    if not epochs:
        raise CkError("resume_from_checkpoint", True, f"no epoch_<k> checkpoint in {out}", start_over)
    newest = out / f"epoch_{epochs[-1]}"
    if epochs_run == epochs[-1] + 1:
        return
    if epochs_run is None or epochs_run - 1 not in epochs:
        raise CkError("checkpoint", str(state_path), f"is missing, unreadable or matches no epoch_<k>/ (newest: "
                      f"{newest.name}): the job ended while saving it, or before any epoch but the last was saved",
                      start_over)
    raise CkError("checkpoint", str(newest), f"is newer than {RECIPE_STATE} (saved after epoch {epochs_run - 1}): "
                  "the job ended while saving it, or it is the last epoch and training had finished",
                  f"delete {newest} to resume after epoch {epochs_run - 1}")


def quiet_offline_wandb() -> None:
    """W&B runs offline, without console capture, system stats, git or code probes (no network, less start-up)."""
    for key, value in {
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_X_DISABLE_STATS": "true",
        "WANDB_X_DISABLE_MACHINE_INFO": "true",
        "WANDB_X_DISABLE_META": "true",
    }.items():
        os.environ.setdefault(key, value)


def exit_code_of(main) -> int:
    """Run a recipe's main; a CkError (bad config or launch) is one line on stderr and exit 2, no traceback."""
    try:
        return main() or 0
    except CkError as err:
        print(f"error: {err}", file=sys.stderr)
        return CkError.exit_code


# ---------------------------------------------------------------- parts


class MetricsJsonl:
    """metrics.jsonl: one JSON object per event, appended and flushed at once (monitor tails it)."""

    def __init__(self, path: str | os.PathLike, start: float, resumed_epochs: int | None = None):
        """A new file for a run from the start; on resume after `resumed_epochs` epochs, the lines of
        those epochs are kept (a killed or requeued job's later lines go), so each step is in it once."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [line for line in self._lines() if self._before(line, resumed_epochs)] if resumed_epochs else []
        with open(self.path, "w") as fresh:
            fresh.writelines(line + "\n" for line in kept)
        self._file = open(self.path, "a", buffering=1)
        self._start = start

    def _lines(self) -> list[str]:
        try:
            return self.path.read_text().splitlines()
        except FileNotFoundError:
            return []

    @staticmethod
    def _before(line: str, epochs: int) -> bool:
        try:
            record = json.loads(line)
        except ValueError:
            return False  # a half-written last line
        return isinstance(record, dict) and record.get("event") != "end" and int(record.get("epoch", epochs)) < epochs

    def write(self, event: str, step: int, epoch: int, **fields) -> None:
        record = {"event": event, "step": step, "epoch": epoch,
                  "wall_time": round(time.perf_counter() - self._start, 4), "time": time.time()}
        record.update({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in fields.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class Ranks:
    """The processes of a run: one (single device) or a torch.distributed group. Sums are over all of them."""

    def __init__(self):
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.is_main = self.rank == 0

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum over ranks (float64, so counts and sums stay exact enough)."""
        if not self.distributed:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather_to_main(self, items: list) -> list:
        """Every rank's list, concatenated on rank 0 (an empty list elsewhere)."""
        if not self.distributed:
            return items
        gathered = [None] * self.world if self.is_main else None
        dist.gather_object(items, gathered, dst=0)
        return [x for part in gathered for x in part] if self.is_main else []


class AnswerTap:
    """Forward hook: answer-token results of each forward pass, added to whichever meter is current."""

    def __init__(self, model: torch.nn.Module, header_ids: list[int], device: torch.device):
        self._header = torch.tensor(header_ids, device=device)
        self.meter = AnswerMeter()
        self.last: AnswerResults | None = None
        self._handle = model.register_forward_hook(self._on_forward, with_kwargs=True)

    def _on_forward(self, module, args, kwargs, output) -> None:
        tokens = kwargs["tokens"] if "tokens" in kwargs else args[0]
        self.last = answer_results(output, tokens, self._header)
        self.meter.update(self.last)

    @contextmanager
    def discarding(self):
        """Forward passes inside are not counted."""
        kept, self.meter = self.meter, AnswerMeter()
        try:
            yield
        finally:
            self.meter = kept

    def remove(self) -> None:
        self._handle.remove()


class StepHook:
    """The stock profiler, whose step() the stock loop calls after each batch, plus a callback of ours."""

    def __init__(self, profiler, on_step):
        self._profiler = profiler
        self._on_step = on_step

    def __enter__(self):
        self._profiler.__enter__()
        return self

    def __exit__(self, *exc):
        return self._profiler.__exit__(*exc)

    def step(self) -> None:
        self._profiler.step()
        self._on_step()

    def __getattr__(self, name):  # start, stop, ...
        return getattr(self._profiler, name)


class CapturedTrainRow:
    """The metric logger as the stock loop sees it: its train row is kept for us to complete and log."""

    def __init__(self, logger):
        self.logger = logger
        self.row: dict | None = None

    def log_dict(self, payload: dict, step: int) -> None:
        self.row = {k: float(v) for k, v in payload.items()}

    def __getattr__(self, name):  # log_config, close, ...
        return getattr(self.logger, name)


def val_loss_sum(model, loss_fn, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss summed over label tokens, label tokens) of one batch, the stock loss (labels shifted by one)."""
    labels = batch.pop("labels")
    logits = model(**batch)
    labels = torch.hstack((labels[..., 1:], torch.full_like(labels[..., :1], loss_fn.ignore_index)))
    if not isinstance(logits, list):
        labels = labels.reshape(-1)
        logits = logits.reshape(-1, logits.size(-1))
    label_tokens = (labels != loss_fn.ignore_index).sum()
    return loss_fn(logits, labels) * label_tokens, label_tokens


# ---------------------------------------------------------------- the mixin


class ValidatingRecipe:
    """Validation, answer-token metrics, metrics.jsonl and epochs_to_save on top of a stock LoRA recipe."""

    STOCK_KEYS: frozenset[str] = COMMON_STOCK_KEYS

    # The recipe's three entry points: the stock ones, with our checks and settings around them.
    def __init__(self, cfg: DictConfig) -> None:
        check_config(cfg, self.STOCK_KEYS)
        set_cpu_threads(cfg)
        super().__init__(cfg)
        self._init_validation(cfg)

    def setup(self, cfg: DictConfig) -> None:
        if "wandb" in cfg.metric_logger.get("_component_", "").lower():
            quiet_offline_wandb()
        super().setup(cfg)
        self._setup_validation(cfg)

    def load_checkpoint(self, cfg_checkpointer: DictConfig) -> dict:
        """The stock loading, after checking that a resume finds a whole checkpoint (check_resume_checkpoint)."""
        self._check_resume(cfg_checkpointer)
        return super().load_checkpoint(cfg_checkpointer)

    def _init_validation(self, cfg: DictConfig) -> None:
        """After the stock __init__: our settings."""
        self._run_val_every_n_steps = cfg.get("run_val_every_n_steps", 0) or 0
        self._batch_size_val = cfg.get("batch_size_val") or DEFAULT_BATCH_SIZE_VAL
        self._max_val_batches = cfg.get("max_val_batches")
        self._epochs_to_save = parse_epochs_to_save(cfg.get("epochs_to_save"), self.total_epochs)
        self._metrics_log_path = cfg.get("metrics_log") or os.path.join(cfg.output_dir, "logs", "metrics.jsonl")
        self._early_stop_after = cfg.get("early_stop_after")
        self._early_stop_accuracy = cfg.get("early_stop_accuracy", 0.99)
        self._target_streak = 0
        self._last_val_acc = None

    def _setup_validation(self, cfg: DictConfig) -> None:
        """After the stock setup: answer tap, validation data, metrics.jsonl (rank 0), resumed step count."""
        self._ranks = Ranks()
        self._use_full_logits_when_small(cfg)
        self._fix_resumed_step_count(cfg)
        self._train_start = time.perf_counter()
        resumed = self.epochs_run if self._resume_from_checkpoint else None
        self._metrics = MetricsJsonl(self._metrics_log_path, self._train_start, resumed) if self._ranks.is_main else None
        if self._ranks.is_main:
            self._metric_logger = CapturedTrainRow(self._metric_logger)
        self._answers = AnswerTap(self._model, assistant_header_ids(self._tokenizer), self._device)
        self._seen_step = self.global_step

        self._val_dataset = None
        if self._run_val_every_n_steps > 0:
            self._val_dataset = config.instantiate(cfg.dataset_val, self._tokenizer)
            # the raw input of each row, for val_predictions.jsonl (column_map: our name -> the file's column)
            self._val_input_column = (cfg.dataset_val.get("column_map") or {}).get("input", "input")
            utils.log_rank_zero(log, f"Validation: {len(self._val_dataset)} rows every {self._run_val_every_n_steps} "
                                f"steps and at the end, batch size {self._batch_size_val} per process.")

    def _use_full_logits_when_small(self, cfg: DictConfig) -> None:
        """With a chunked-output loss and small logits (FULL_LOGITS_MAX_BYTES), one output and one cross-entropy.

        The loss is the same (mean cross-entropy over label tokens); only the chunking goes.
        """
        if type(self._loss_fn).__name__ != "CEWithChunkedOutputLoss" or cfg.get("compile"):
            return  # (compiled: torchtune compiles the chunked loss; keep what it compiled)
        seq_len = cfg.tokenizer.get("max_seq_len")
        embeddings = getattr(self._model, "tok_embeddings", None)
        if not seq_len or embeddings is None:
            return
        rows = max(cfg.batch_size, self._batch_size_val if self._run_val_every_n_steps else 0)
        logits_bytes = rows * seq_len * embeddings.weight.shape[0] * 4
        if logits_bytes > FULL_LOGITS_MAX_BYTES:
            return
        self._model.set_num_output_chunks(0)
        self._loss_fn = torch.nn.CrossEntropyLoss(ignore_index=self._loss_fn.ignore_index)

    def _setup_profiler(self, cfg_profiler=None):
        return StepHook(super()._setup_profiler(cfg_profiler), self._after_batch)

    def _fix_resumed_step_count(self, cfg: DictConfig) -> None:
        """On resume, continue the step count and LR schedule where the saved epoch ended.

        The single-device stock recipe sets global_step only when max_steps_per_epoch truncates an epoch, so a
        resumed run would otherwise restart at step 0 with a fresh warm-up.
        """
        resumed_step = self.epochs_run * self._steps_per_epoch
        if self.global_step != resumed_step:
            self.global_step = resumed_step
            self._lr_scheduler = self._setup_lr_scheduler(
                cfg_lr_scheduler=cfg.lr_scheduler,
                num_training_steps=self.total_epochs * self._steps_per_epoch,
                last_epoch=self.global_step - 1,
            )
        if self.epochs_run:
            utils.log_rank_zero(log, f"Resumed after epoch {self.epochs_run - 1}: continuing at epoch "
                                f"{self.epochs_run}, step {self.global_step}.")

    def _check_resume(self, cfg_checkpointer: DictConfig) -> None:
        explicit = cfg_checkpointer.get("adapter_checkpoint") or cfg_checkpointer.get("recipe_checkpoint")
        if self._resume_from_checkpoint and not explicit:
            check_resume_checkpoint(cfg_checkpointer.output_dir)

    # ---------------------------------------------------------------- during the stock loop

    def _after_batch(self) -> None:
        """Called by the stock loop after each batch: train row and validation when a step has completed."""
        if self.global_step == self._seen_step:
            return
        self._seen_step = self.global_step
        if self.global_step % self._log_every_n_steps == 0:
            self._log_train()
        every = self._run_val_every_n_steps
        is_last_step = self.global_step == self.total_epochs * self._steps_per_epoch
        if every and self.global_step % every == 0 and not is_last_step:
            # the last step's validation is the final one, after train(); so is the one an early stop ends on
            # (train() validates that step again as the final one): each step's row is written once
            scalars = self.validate(self.epochs_run, record=False)
            self._check_early_stop()
            self._record_validation(scalars, self.epochs_run)

    def _check_early_stop(self) -> None:
        """Every rank sees the same all_reduced accuracy, so every rank stops at the same step."""
        if not self._early_stop_after or self._last_val_acc is None:
            return
        reached = self._last_val_acc >= self._early_stop_accuracy
        self._target_streak = self._target_streak + 1 if reached else 0
        if self._target_streak >= self._early_stop_after:
            raise EarlyStop(f"validation answer accuracy >= {self._early_stop_accuracy} for {self._target_streak} "
                            f"consecutive validations (early_stop_after {self._early_stop_after})")

    def _log_train(self) -> None:
        meter = self._answers.meter
        loss_sum, correct, count = self._ranks.sum(meter.sums(), self._device)
        meter.reset()
        if not self._ranks.is_main:
            return
        scalars = self._metric_logger.row or {}
        self._metric_logger.row = None
        scalars["train_answer_loss"] = loss_sum / count if count else float("nan")
        scalars["train_answer_acc"] = correct / count if count else float("nan")
        self._metric_logger.logger.log_dict(scalars, step=self.global_step)
        self._metrics.write("train", self.global_step, self.epochs_run, **scalars)

    def train(self) -> None:
        """The stock training loop, then the final validation and the "end" event."""
        self._answers.meter.reset()  # forward passes before training are not training rows
        stopped = None
        try:
            super().train()
        except EarlyStop as stop:
            stopped = str(stop)
            utils.log_rank_zero(log, f"Early stop at step {self.global_step}: {stopped}; saving a checkpoint.")
            self._optimizer.zero_grad(set_to_none=True)
            super().save_checkpoint(epoch=self.epochs_run)
        if self._run_val_every_n_steps:
            self.validate(self.epochs_run if stopped else self.total_epochs - 1, final=True)
        if self._ranks.is_main:
            extra = {"stopped_early": stopped} if stopped else {}
            self._metrics.write("end", self.global_step, self.epochs_run if stopped else self.total_epochs - 1,
                                steps=self.global_step, wall_time=round(time.perf_counter() - self._train_start, 4),
                                **extra)

    # ---------------------------------------------------------------- validation

    def _val_shard(self) -> tuple[list[int], int]:
        """(this rank's row indices, the batch count every rank runs): rows in file order, strided over ranks."""
        rows = self._val_rows()
        mine = list(range(self._ranks.rank, rows, self._ranks.world))
        most = math.ceil(rows / self._ranks.world)
        return mine, math.ceil(most / self._batch_size_val)

    def _val_loader(self, indices: list[int]) -> DataLoader:
        collate = collate_function("torchtune.data.padded_collate_sft")
        return DataLoader(
            Subset(self._val_dataset, indices), batch_size=self._batch_size_val, shuffle=False, drop_last=False,
            collate_fn=partial(collate, padding_idx=self._tokenizer.pad_id, ignore_idx=self._loss_fn.ignore_index),
        )

    @torch.no_grad()
    def validate(self, epoch: int, final: bool = False, record: bool = True) -> dict | None:
        """Loss over the training token set and answer-token metrics over the validation rows (all ranks);
        with `record`, rank 0 writes them (W&B, metrics.jsonl, and for the final one the predictions)."""
        started = time.perf_counter()
        indices, batches = self._val_shard()
        train_meter, self._answers.meter = self._answers.meter, AnswerMeter()
        self._model.eval()
        loss_sum, loss_tokens, predictions, done, rows_done = 0.0, 0, [], 0, 0
        for batch in self._val_loader(indices):
            utils.batch_to_device(batch, self._device)
            rows = batch["tokens"].size(0)
            batch_loss, batch_tokens = val_loss_sum(self._model, self._loss_fn, batch)
            loss_sum += batch_loss
            loss_tokens += batch_tokens
            if final:
                predictions.extend(self._prediction_rows(self._answers.last, indices[rows_done:rows_done + rows]))
            done, rows_done = done + 1, rows_done + rows
        for _ in range(batches - done):  # FSDP: every rank runs as many forward passes; results dropped
            with self._answers.discarding():
                val_loss_sum(self._model, self._loss_fn, self._filler_batch())
        self._model.train()
        val_meter, self._answers.meter = self._answers.meter, train_meter

        loss_sum, loss_tokens, answer_loss, correct, count = self._ranks.sum(
            [loss_sum, loss_tokens, *val_meter.sums()], self._device)
        predictions = self._ranks.gather_to_main(predictions)
        self._last_val_acc = correct / count if count else None
        if not self._ranks.is_main:
            return None
        scalars = {
            "val_loss": loss_sum / max(loss_tokens, 1),
            "val_answer_loss": answer_loss / count if count else float("nan"),
            "val_answer_acc": correct / count if count else float("nan"),
            "val_examples": self._val_rows(),
        }
        log.info(f"Validation at step {self.global_step}{' (final)' if final else ''}: "
                 f"val_loss {scalars['val_loss']:.4f}, answer loss {scalars['val_answer_loss']:.4f}, "
                 f"answer acc {scalars['val_answer_acc']:.4f} on {scalars['val_examples']} rows "
                 f"in {time.perf_counter() - started:.2f}s")
        if record:
            self._record_validation(scalars, epoch, final, predictions)
        return scalars

    def _record_validation(self, scalars: dict | None, epoch: int, final: bool = False,
                           predictions: list | None = None) -> None:
        if scalars is None:  # not rank 0
            return
        self._metric_logger.logger.log_dict(scalars, step=self.global_step)
        self._metrics.write("val", self.global_step, epoch, final=final, **scalars)
        if final:
            self._write_predictions(sorted(predictions or [], key=lambda p: p["index"]))

    def _val_rows(self) -> int:
        """Rows evaluated: the first max_val_batches * batch_size_val of the file, or all."""
        rows = len(self._val_dataset)
        if self._max_val_batches is not None:
            rows = min(rows, self._max_val_batches * self._batch_size_val)
        return rows

    def _filler_batch(self) -> dict:
        batch = next(iter(self._val_loader([0])))
        utils.batch_to_device(batch, self._device)
        return batch

    def _prediction_rows(self, results: AnswerResults, batch_indices: list[int]) -> list[dict]:
        source = raw_rows(self._val_dataset)
        rows = []
        for row, loss, predicted, target in zip(results.rows.tolist(), results.loss.tolist(),
                                                results.predicted.tolist(), results.target.tolist()):
            index = batch_indices[row]
            rows.append({"index": index, "input": source[index].get(self._val_input_column),
                         "target": self._token_text(target), "predicted": self._token_text(predicted),
                         "answer_loss": loss})
        return rows

    def _token_text(self, token_id: int) -> str:
        """The text of one token; ids the tokenizer does not know (a model's padded vocabulary) as <id N>."""
        try:
            return self._tokenizer.decode([token_id], truncate_at_eos=False, skip_special_tokens=False)
        except (KeyError, ValueError, IndexError):
            return f"<id {token_id}>"

    def _write_predictions(self, predictions: list[dict]) -> None:
        path = Path(self._metrics_log_path).parent / "val_predictions.jsonl"
        atomic_write_text(path, "".join(json.dumps(p) + "\n" for p in predictions))

    # ---------------------------------------------------------------- checkpoints and end

    def save_checkpoint(self, epoch: int) -> None:
        """End of an epoch: drop leftover micro-batch gradients; the stock checkpoint for epochs_to_save."""
        # with gradient accumulation, batches after the epoch's last full step must not leak into the next epoch
        self._optimizer.zero_grad(set_to_none=True)
        if epoch not in self._epochs_to_save:
            utils.log_rank_zero(log, f"Epoch {epoch}: not in epochs_to_save, no checkpoint written.")
            return
        started = time.perf_counter()
        super().save_checkpoint(epoch=epoch)
        utils.log_rank_zero(log, f"Checkpoint of epoch {epoch} saved in {time.perf_counter() - started:.2f}s.")

    def cleanup(self) -> None:
        self._answers.remove()
        if self._metrics is not None:
            self._metrics.close()
        super().cleanup()
