"""Method registry: one file per method, imported here in one line each so it registers by name."""

from da.methods import (
    aad,  # noqa: F401
    adamatch,  # noqa: F401
    bnm,  # noqa: F401
    cdan,  # noqa: F401
    cdan_sdat,  # noqa: F401
    coral,  # noqa: F401
    dan,  # noqa: F401
    dann,  # noqa: F401
    finetune,  # noqa: F401
    fixmatch,  # noqa: F401
    mcc,  # noqa: F401
    mcd,  # noqa: F401
    mdd,  # noqa: F401
    nrc,  # noqa: F401
    self_training,  # noqa: F401
    shot,  # noqa: F401
    source_only,  # noqa: F401
)
from da.methods.base import METHODS, Method, MethodConfig

__all__ = ["METHODS", "Method", "MethodConfig"]
