#!/usr/bin/env bash
# Command 1: install (first time only) and run the bit-sequences sanity check end to end
# on this machine with the embedded tiny model. Extra arguments go to `ck sanity-check`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
exec "$ROOT/.venv/bin/ck" sanity-check bit_sequences "$@"
