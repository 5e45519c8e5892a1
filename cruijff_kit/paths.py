"""Where things live: the repository checkout (when running from one)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def repo_root() -> Path | None:
    """The checkout that holds this package (editable install), or None for a plain install."""
    candidate = PACKAGE_DIR.parent
    if (candidate / "pyproject.toml").is_file() and (candidate / "sanity_checks").is_dir():
        return candidate
    return None


def default_data_dir() -> Path:
    """`data/green/bit_sequences/` under the checkout; outside a checkout, the current directory."""
    root = repo_root()
    return root / "data" / "green" / "bit_sequences" if root else Path.cwd()
