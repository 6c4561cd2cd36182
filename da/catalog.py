"""What can be chosen: methods, datasets (with their domains), backbones, validators and the cross-run rules of
``da select``, each with a one-line description.

Read from the registries and the config groups at call time, so a method, dataset or backbone added to the
package (or a YAML added to ``configs/``) is listed the moment it exists. ``da list ...`` prints these;
``da.list_methods()`` and friends return them.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    """One choice: its ``name`` (what an override takes, e.g. ``method=<name>``), its ``kind`` (methods:
    inductive, transductive or unsupervised; validators: target-only or with-source; ``da select``'s rules:
    cross-run), a one-line description and, for a dataset, its domains (``dataset.source`` / ``dataset.target``)."""

    name: str
    kind: str
    description: str
    domains: tuple[str, ...] = ()


def _first_line(text: str | None, limit: int = 110) -> str:
    """The first sentence of ``text``'s first paragraph, at most ``limit`` characters (cut after a whole word)."""
    para = []
    for line in (text or "").strip().splitlines():
        if not line.strip():
            break
        para.append(line.strip())
    joined = " ".join(para).replace("``", "")  # reST literals read as plain words on a terminal
    end = re.search(r"(?<! al)(?<! e\.g)(?<! i\.e)(?<! sec)\. ", joined)
    sentence = joined[: end.start() + 1] if end else joined
    if len(sentence) <= limit:
        return sentence
    cut = sentence[:limit].rsplit(" ", 1)[0]  # at a word's end: a cut name or arXiv number would read as whole
    return cut.rstrip(" ,;:(") + " …"


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


def dataset_domains() -> dict[str, tuple[str, ...]]:
    """The domains each dataset's ``dataset.source`` / ``dataset.target`` take, from the constants its config checks
    them against (``folder``: the sub-folders of ``dataset.root``)."""
    from da.data import DIGIT_DOMAINS, digit5, listed, mnist_usps, office31

    return {
        "digits": DIGIT_DOMAINS,
        "mnist_usps": mnist_usps.DOMAINS,
        "office31": office31.DOMAINS,
        "folder": ("<the folders under dataset.root>",),
        "office_home": listed.OFFICE_HOME.domains,
        "visda2017": listed.VISDA2017.domains,
        "domainnet": listed.DOMAINNET.domains,  # variant=126: clipart, painting, real, sketch
        "mnist_m": listed.MNIST_M.domains,
        "svhn": ("svhn",),
        "digit5": digit5.DIGIT5_DOMAINS,
    }


def list_datasets() -> list[Entry]:
    """Every dataset config (``dataset=<name>``, ``configs/dataset/``) with the first line of its description and
    its domains."""
    domains = dataset_domains()
    return [Entry(e.name, e.kind, e.description, domains.get(e.name, ())) for e in _group("dataset", "dataset")]


def list_backbones() -> list[Entry]:
    """Every backbone config (``backbone=<name>``, ``configs/backbone/``); ``backbone=timm backbone.name=<model>``
    takes any timm model."""
    return _group("backbone", "backbone")


def list_validators() -> list[Entry]:
    """Every label-free validator (``selection=<name>``, and a ``da select --rule``; higher is better), target-only
    or using the labelled source validation split, then the rules of ``da select`` that rank finished runs
    (kind ``cross-run``; ``cross-run, default`` for the default); each described by its entry in the docstring of
    :mod:`da.validators` or :mod:`da.crossrun`."""
    from da import validators

    described = _bullets(validators.__doc__ or "")
    entries = [
        Entry(
            name,
            "target-only" if name in validators.TARGET_ONLY else "with-source",
            _first_line(described.get(name, ""), 120),
        )
        for name in validators.VALIDATORS
    ]
    return entries + list_rules()


def _bullets(doc: str) -> dict[str, str]:
    """``- ``name``: text`` entries of a docstring's list, by name."""
    return dict(re.findall(r"^- ``(\w+)``: (.*?)(?=^- |^$|\Z)", doc, re.M | re.S))


def list_rules() -> list[Entry]:
    """The cross-run rules of ``da select`` that are not validators (``da select --rule <name>``), read from
    :mod:`da.crossrun`'s source (its docstring, ``RULES`` and ``DEFAULT_RULE``) without importing it (torch)."""
    spec = importlib.util.find_spec("da.crossrun")
    if spec is None or spec.origin is None:
        return []
    with open(spec.origin, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    names: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            names[node.targets[0].id] = node.value
    rules = names.get("RULES")
    default = names.get("DEFAULT_RULE")
    listed = [e.value for e in getattr(rules, "elts", []) if isinstance(e, ast.Constant)]
    default_name = default.value if isinstance(default, ast.Constant) else None
    described = _bullets(ast.get_docstring(tree) or "")
    return [
        Entry(name, "cross-run, default" if name == default_name else "cross-run", _first_line(described[name], 120))
        for name in listed
        if name in described
    ]


LISTS = {
    "methods": list_methods,
    "datasets": list_datasets,
    "backbones": list_backbones,
    "validators": list_validators,
}
