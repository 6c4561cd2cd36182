"""Method registry: one file per method, imported here in one line each so it registers by name."""

from da.methods import source_only  # noqa: F401
from da.methods.base import METHODS, Method, MethodConfig

__all__ = ["METHODS", "Method", "MethodConfig"]
