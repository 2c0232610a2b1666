"""A benchmarking and research harness for fine-tuning strategies in PyTorch.

``python -m harness study finetune_vs_probe`` runs the default study; ``harness.load(run_dir)``
reads a finished run's tables back as pandas.
"""

from harness.analysis.results import load
from harness.errors import UserError

__all__ = ["UserError", "load"]
__version__ = "0.1.0"
