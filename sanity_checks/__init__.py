"""Sanity checks shipped with cruijff_kit, each a package registered under the `cruijff_kit.checks` entry points."""
