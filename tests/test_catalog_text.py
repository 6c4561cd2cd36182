"""`da list` descriptions cut at a whole word: a cut arXiv number or name would read as a whole, wrong one."""

from __future__ import annotations

import re

from da.catalog import list_backbones, list_validators


def test_long_descriptions_end_after_a_whole_word():
    entries = list_validators() + list_backbones()
    cut = [e for e in entries if e.description.endswith("…")]
    assert cut  # the long first sentences of the validators' and backbones' descriptions
    for e in cut:
        assert not re.search(r"\w…$", e.description), e.description
