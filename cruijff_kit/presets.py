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

EMBEDDED = {
    "model": "ck-tiny-llama",
    "runs": {
        "parity_run": {"bit_length": 8, "N": 3000, "p": 0.0, "bit_parity": True, "val_size": 64},
        "probabilistic_run": {"bit_length": 8, "N": 3000, "p": 0.5, "bit_parity": False, "val_size": 64},
    },
    "hyper": {
        "epochs": 1, "batch_size": 16, "lora_rank": 8, "lr": 3e-3, "num_warmup_steps": 10,
        "lr_scheduler": "get_cosine_schedule_with_warmup", "log_every_n_steps": 5,
        "run_val_every_n_steps": 50, "train_on_input": True, "system_prompt": "", "seed": 42,
    },
    "compute": {"gpus": 0, "time": "00:10:00", "mem": "4G"},
}

PRESETS = {"seed": SEED, "embedded": EMBEDDED}
