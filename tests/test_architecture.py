"""ARCHITECTURE.md matches the code (issue 20): every module under ``da/`` is named in it, and no document of the
repository names a file the repository lacks."""

from __future__ import annotations

import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: A repository path (``da/train.py``, ``configs/method/dann.yaml``) or a top-level document (``DESIGN.md``);
#: paths with placeholders (``<name>.yaml``) or inside a run folder (``<run>/results.json``) do not match.
PATH = re.compile(
    r"(?<![\w/.<>~$*{-])((?:[\w.-]+/)+[\w.-]+\.(?:py|md|yaml|yml|ipynb|toml|json|csv|txt|sh)|[A-Z][A-Z_]+\.md)\b"
)


def _documents() -> list[str]:
    found = []
    for pattern in ("*.md", "paper/**/*.md", "docs/**/*.md", "benchmarks/**/*.md", "notebooks/**/*.md"):
        found += glob.glob(os.path.join(ROOT, pattern), recursive=True)
    return sorted(found)


def test_every_module_is_named_in_architecture():
    text = open(os.path.join(ROOT, "ARCHITECTURE.md")).read()
    missing = []
    for path in sorted(glob.glob(os.path.join(ROOT, "da", "**", "*.py"), recursive=True)):
        rel = os.path.relpath(path, ROOT).replace(os.sep, "/")
        if rel.endswith("__init__.py"):
            rel = rel.removesuffix("__init__.py")  # a package is named by its folder: da/methods/
            if rel == "da/":
                continue
        if f"`{rel}" not in text:
            missing.append(rel)
    assert not missing, f"ARCHITECTURE.md does not name: {missing}"


def test_no_document_names_a_missing_file():
    docs = _documents()
    assert any(d.endswith("README.md") for d in docs)
    dangling = []
    for doc in docs:
        for match in PATH.finditer(open(doc).read()):
            name = match.group(1)
            if not os.path.exists(os.path.join(ROOT, name)):
                dangling.append(f"{os.path.relpath(doc, ROOT)}: {name}")
    assert not dangling, dangling


def test_code_and_benchmarks_carry_no_issue_numbers():
    """History lives in CHANGELOG.md and the issue notes: no file under da/ or benchmarks/ cites an issue number
    (``grep -rn "issue [0-9]" da/ benchmarks/``)."""
    found = []
    for folder in ("da", "benchmarks"):
        for path in glob.glob(os.path.join(ROOT, folder, "**", "*"), recursive=True):
            if not os.path.isfile(path) or path.endswith((".pyc", ".png", ".npz", ".pt")):
                continue
            with open(path, errors="replace") as fh:
                found += [
                    f"{os.path.relpath(path, ROOT)}:{i}"
                    for i, line in enumerate(fh, 1)
                    if re.search(r"issue [0-9]", line)
                ]
    assert not found, found
