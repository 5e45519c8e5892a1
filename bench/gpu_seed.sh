#!/usr/bin/env bash
# The seed configuration on one CUDA GPU with the random-init Llama-3.2-1B (bench/gpu_seed.py says what it
# measures). On a GPU machine with this repository, after its setup (./test.sh or bash scripts/bootstrap.sh,
# which installs the dev extras, llama-models included):
#
#   bash bench/gpu_seed.sh              # 300 steps, about 5-10 minutes on one A100/H100
#   bash bench/gpu_seed.sh --steps 100 --keep
#
# Exit codes: 0 measured and printed; 3 no CUDA device here (nothing run, nothing written);
# 1 the training run failed (its log tail is printed); 2 bad arguments.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" "$ROOT/bench/gpu_seed.py" "$@"
