"""cruijff_kit: plan, scaffold, launch, monitor and judge LLM fine-tuning sanity checks."""

__version__ = "0.1.0"
