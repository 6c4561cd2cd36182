"""CDAN+SDAT and CDAN+MIC: the combinations the SDAT and MIC papers report, registered under their own names so
that suites and tables name them (``method=cdan_sdat`` is ``method=cdan method.sdat_rho=0.02``; ``cdan_mic`` is
``method=cdan method.mic_weight=1``). The options themselves live on every joint method
(:class:`da.methods.base.AdaptationConfig`); here only their defaults differ from CDAN's.
"""

from __future__ import annotations

from dataclasses import dataclass

from da.methods.base import METHODS
from da.methods.cdan import CDAN


@METHODS.register("cdan_sdat")
class CDANSDAT(CDAN):
    """CDAN with SAM on the source loss (Rangwani et al., ICML 2022, arXiv 2206.08213)."""

    @dataclass
    class Config(CDAN.Config):
        sdat_rho: float = 0.02  # val-iisc/SDAT run_office_home.sh: rho 0.02 (Office-Home, CDAN+SDAT)


@METHODS.register("cdan_mic")
class CDANMIC(CDAN):
    """CDAN with masked image consistency from an EMA teacher (Hoyer et al., CVPR 2023, arXiv 2212.01322)."""

    @dataclass
    class Config(CDAN.Config):
        mic_weight: float = 1.0  # lhoyer/MIC cls/: the masked consistency loss is added with weight 1
