"""da: transfer learning and domain adaptation in PyTorch (inductive, transductive, unsupervised)."""

from da.config import compose
from da.experiment import fit

__all__ = ["compose", "fit"]
__version__ = "0.1.0"
