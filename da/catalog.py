"""What can be chosen: methods, datasets, backbones and validators, each with a one-line description.

Read from the registries and the config groups at call time, so a method, dataset or backbone added to the
package (or a YAML added to ``configs/``) is listed the moment it exists. ``da list ...`` prints these;
``da.list_methods()`` and friends return them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    """One choice: its ``name`` (what an override takes, e.g. ``method=<name>``), its ``kind`` (methods:
    inductive, transductive or unsupervised; validators: target-only or with-source) and a one-line description."""

    name: str
    kind: str
    description: str


def _first_line(text: str | None, limit: int = 110) -> str:
    """The first sentence of ``text``'s first paragraph, at most ``limit`` characters."""
    para = []
    for line in (text or "").strip().splitlines():
        if not line.strip():
            break
        para.append(line.strip())
    joined = " ".join(para).replace("``", "")  # reST literals read as plain words on a terminal
    end = re.search(r"(?<! al)(?<! e\.g)(?<! i\.e)\. ", joined)
    sentence = joined[: end.start() + 1] if end else joined
    return sentence if len(sentence) <= limit else sentence[: limit - 1].rstrip() + "…"


def _yaml_header(path: str) -> str:
    """The first sentence of a YAML config's leading comment (its description)."""
    lines = []
    with open(path) as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            lines.append(line.lstrip("#").strip())
    return _first_line("\n".join(lines))


def list_methods() -> list[Entry]:
    """Every registered method (``method=<name>``) with its kind and the first line of its docstring."""
    from da.methods import METHODS

    return [
        Entry(name, str(METHODS.get(name).kind), _first_line(METHODS.get(name).__doc__)) for name in METHODS.names()
    ]


def _group(group: str, kind: str) -> list[Entry]:
    from da.config import config_dir, group_options

    folder = os.path.join(config_dir(), group)
    return [Entry(name, kind, _yaml_header(os.path.join(folder, f"{name}.yaml"))) for name in group_options(group)]


def list_datasets() -> list[Entry]:
    """Every dataset config (``dataset=<name>``, ``configs/dataset/``) with the first line of its description."""
    return _group("dataset", "dataset")


def list_backbones() -> list[Entry]:
    """Every backbone config (``backbone=<name>``, ``configs/backbone/``); ``backbone=timm backbone.name=<model>``
    takes any timm model."""
    return _group("backbone", "backbone")


def list_validators() -> list[Entry]:
    """Every label-free validator (``selection=<name>``; higher is better), target-only or using the labelled
    source validation split; each described by its entry in :mod:`da.validators`' docstring."""
    from da import validators

    described = dict(re.findall(r"^- ``(\w+)``: (.*?)(?=^- ``|\Z)", validators.__doc__ or "", re.M | re.S))
    return [
        Entry(
            name,
            "target-only" if name in validators.TARGET_ONLY else "with-source",
            _first_line(described.get(name, ""), 120),
        )
        for name in validators.VALIDATORS
    ]


LISTS = {
    "methods": list_methods,
    "datasets": list_datasets,
    "backbones": list_backbones,
    "validators": list_validators,
}
