"""Test-time adaptation: a source model adapts while it predicts a stream of unlabelled target batches.

``python -m da.tta method=tent protocol=continual severity=5`` (``da/tta/__main__.py``) or, in Python,
``da.tta.fit_stream(["method=tent", "protocol=mixed"])``. The names load lazily, so ``import da.tta.losses``
costs what the losses cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["TTA_METHODS", "compose", "fit_stream"]

_LAZY = {"compose": "da.tta.config", "fit_stream": "da.tta.run", "TTA_METHODS": "da.tta.methods"}

if TYPE_CHECKING:
    from da.tta.config import compose
    from da.tta.methods import TTA_METHODS
    from da.tta.run import fit_stream


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'da.tta' has no attribute {name!r}")
