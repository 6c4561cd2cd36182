"""Test-time methods: one file per method, imported here in one line each so it registers by name."""

from da.tta.methods import (
    cotta,  # noqa: F401
    eata,  # noqa: F401
    sar,  # noqa: F401
    source,  # noqa: F401
    tent,  # noqa: F401
)
from da.tta.methods.base import TTA_METHODS, StreamContext, TTAConfig, TTAMethod

__all__ = ["TTA_METHODS", "StreamContext", "TTAConfig", "TTAMethod"]
