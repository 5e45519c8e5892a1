"""The bit-sequences sanity check (registered as `bit_sequences` in the `cruijff_kit.checks` entry points)."""

from sanity_checks.bit_sequences.check import CHECK, BitSequenceArgs, BitSequences

__all__ = ["CHECK", "BitSequenceArgs", "BitSequences"]
