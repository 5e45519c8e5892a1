"""Preset experiment sizes for the bit-sequences sanity check.

`SEED` reproduces the original check (two runs on Llama-3.2-1B-Instruct on a GPU cluster).
`EMBEDDED` is sized so that both runs finish on a 2-core CPU with the embedded tiny model
in well under a minute; its numbers were measured with bench/ and the training tests.
"""

from __future__ import annotations

SEED = {
    "model": "Llama-3.2-1B-Instruct",
    "runs": {
        "parity_run": {"bit_length": 15, "N": 33000, "p": 0.0, "bit_parity": True, "val_size": 4000},
        "probabilistic_run": {"bit_length": 15, "N": 33000, "p": 0.5, "bit_parity": False, "val_size": 4000},
    },
    "hyper": {
        "epochs": 10, "batch_size": 1, "lora_rank": 8, "lr": 3e-4, "num_warmup_steps": 100,
        "lr_scheduler": "get_cosine_schedule_with_warmup", "log_every_n_steps": 1,
        "run_val_every_n_steps": 50, "train_on_input": True, "system_prompt": "", "seed": 42,
    },
    "compute": {"gpus": 1, "time": "01:30:00", "mem": "32G"},
}

# Measured on this 2-core CPU, both runs started at once as two processes (1 torch thread each), tiny
# model with zero key projections (uniform attention: parity is learned from the count of ones), recipe
# lora_finetune_single_device_val; S = training seed, D = data seed:
# - wall per run (start-up + ~465 steps + validation every 50 steps): 13.7-15.7 s (29.5 s with 4 runs
#   at once).
# - parity_run, accuracy on validation strings whose count of ones occurs in training:
#   (S, D) = (42, 42) 1.000, (2, 3) 1.000; (1, 7) 0.375 (did not learn). With N 4000 (~950 steps,
#   ~23 s): (1, 7) 1.000 but (2, 3) 0.250. 6- and 8-bit parity never generalised within 700 steps.
# - probabilistic_run, val answer loss - H(p_hat) vs tolerance 2 SE + 0.02: (42, 42) +0.0247 <= 0.0286
#   pass; (1, 7) +0.0259 > 0.0249, (2, 3) +0.0335 > 0.0317: a systematic ~+0.025 excess, borderline.
# The default seeds (42) pass both; other seeds are not reliable yet (see bench/RESULTS.md).
EMBEDDED = {
    "model": "ck-tiny-llama",
    "runs": {
        "parity_run": {"bit_length": 5, "N": 2000, "p": 0.0, "bit_parity": True, "val_size": 8},
        "probabilistic_run": {"bit_length": 8, "N": 2000, "p": 0.5, "bit_parity": False, "val_size": 64},
    },
    "hyper": {
        "epochs": 5, "batch_size": 16, "lora_rank": 8, "lr": 3e-3, "num_warmup_steps": 10,
        "lr_scheduler": "get_cosine_schedule_with_warmup", "log_every_n_steps": 5,
        "run_val_every_n_steps": 50, "train_on_input": True, "system_prompt": "", "seed": 42,
    },
    "compute": {"gpus": 0, "time": "00:10:00", "mem": "4G"},
}

PRESETS = {"seed": SEED, "embedded": EMBEDDED}
