"""Models the toolkit knows how to render configs for (see registry.py)."""
