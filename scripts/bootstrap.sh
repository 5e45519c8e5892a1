#!/usr/bin/env bash
# Create .venv at the repository root (if missing) and install cruijff_kit into it.
# Idempotent: re-installs only when pyproject.toml or requirements.lock changed.
# Sourced by ./run.sh and ./test.sh; prints the venv's python path on its last line.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY_BASE="${CK_PYTHON:-$(command -v python3.11 || command -v python3)}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV with $PY_BASE" >&2
  "$PY_BASE" -m venv "$VENV"
fi
want="$(cat "$ROOT/pyproject.toml" "$ROOT/requirements.lock" | sha256sum | cut -d' ' -f1)"
stamp="$VENV/.ck-install-stamp"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[bootstrap] installing torch==2.13.0 (CPU) first, then cruijff_kit" >&2
  # (the grep drops pip's notes about this machine's local package mirrors, which are noise here)
  "$VENV/bin/python" -m pip install --quiet torch==2.13.0 2>&1 | { grep -v "is ignored: it is neither" || true; } >&2
  "$VENV/bin/python" -m pip install --quiet -c "$ROOT/requirements.lock" -e "$ROOT[dev]" 2>&1 \
    | { grep -v "is ignored: it is neither" || true; } >&2
  echo "$want" > "$stamp"
fi
