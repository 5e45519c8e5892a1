#!/usr/bin/env bash
# Command 2: install (first time only) and run the whole test suite.
# SLURM tests start a local SLURM themselves (scripts/slurm-local).
#
#   ./test.sh                 the full suite (CI runs exactly this)
#   ./test.sh --fast          the fast tier for every change: no SLURM, no training, nothing marked slow;
#                             two workers (pytest-xdist), one test file per worker
#   ./test.sh --random-order  the full suite in a shuffled order (proves the tests are independent)
#   ./test.sh --extended      also the costly variants marked `extended` (about 4 more minutes)
# Other arguments go to pytest.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$ROOT/scripts/bootstrap.sh" || exit 1
cd "$ROOT"
args=()
for arg in "$@"; do
  case "$arg" in
    --fast) args+=(-m "not slurm and not training and not slow" -n 2 --dist loadfile) ;;
    --random-order) args+=(--random-order) ;;
    --extended) args+=(-m "not unstable") ;;
    *) args+=("$arg") ;;
  esac
done
"$ROOT/.venv/bin/python" -m pytest "${args[@]}"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
