"""A benchmarking and research harness for fine-tuning strategies in PyTorch.

``python -m harness study finetune_vs_probe`` runs the default study; ``harness.load(run_dir)``
reads a finished run's tables back as pandas.
"""

from harness.errors import UserError

__all__ = ["UserError", "load"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # pandas loads on first use, not with every ``python -m harness`` (a worker, a CLI error)
    if name == "load":
        from harness.analysis.results import load

        return load
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
