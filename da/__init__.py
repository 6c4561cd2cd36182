"""da: transfer learning and domain adaptation in PyTorch (inductive, transductive, unsupervised).

The top-level names load lazily, so ``import da.losses`` costs what the losses cost (torch), not the whole
experiment stack (Hydra, torchvision models, the trainer)::

    import da

    result = da.fit(["method=dann", "trainer.epochs=5"])  # or da.fit({"method": "dann"}); returns a FitResult
    run = da.load_run(result.run_dir)  # the trained model, its class names and preprocessing; no dataset needed
    da.list_methods()  # every method with its kind and a one-line description
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "compose",
    "fit",
    "list_backbones",
    "list_datasets",
    "list_methods",
    "list_validators",
    "load_run",
    "select",
]
__version__ = "0.1.0"

_LAZY = {
    "compose": "da.config",
    "fit": "da.experiment",
    "load_run": "da.build",
    "list_methods": "da.catalog",
    "list_datasets": "da.catalog",
    "list_backbones": "da.catalog",
    "list_validators": "da.catalog",
    "select": "da.crossrun",
}

if TYPE_CHECKING:
    from da.build import load_run
    from da.catalog import list_backbones, list_datasets, list_methods, list_validators
    from da.config import compose
    from da.crossrun import select
    from da.experiment import fit


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'da' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API only (not this module's typing imports)."""
    return sorted([*__all__, "__version__"])
