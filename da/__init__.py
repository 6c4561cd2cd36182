"""da: transfer learning and domain adaptation in PyTorch (inductive, transductive, unsupervised).

The top-level names load lazily, so ``import da.losses`` costs what the losses cost (torch), not the whole
experiment stack (Hydra, torchvision models, the trainer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["compose", "fit", "load_run"]
__version__ = "0.1.0"

_LAZY = {"compose": "da.config", "fit": "da.experiment", "load_run": "da.build"}

if TYPE_CHECKING:
    from da.build import load_run
    from da.config import compose
    from da.experiment import fit


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'da' has no attribute {name!r}")
