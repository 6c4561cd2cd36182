"""Build the paper: ``python paper/build.py`` (or ``make paper``).

Fills ``paper.md``'s table blocks and placeholders with the generated benchmark tables and figures and writes
``paper/build/paper.md`` and ``paper/build/paper.html``; also ``paper.pdf`` where pandoc and a TeX engine are
installed. Table blocks ``<!-- table:KEY -->`` ... ``<!-- /table -->`` hold the generated tables in paper.md itself
(``make tables`` refreshes them; ``tests/test_paper.py`` checks they are current; see ``benchmarks/report.py``).
Placeholders: ``{{table:SUITE}}`` (benchmarks/results/SUITE/tables/SUITE.md) and ``{{figure:SUITE/FILE|caption}}``
(benchmarks/results/SUITE/figures/FILE).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(os.path.dirname(HERE), "benchmarks", "results")
sys.path.insert(0, os.path.dirname(HERE))  # the repository: benchmarks.report fills the table blocks
PLACEHOLDER = re.compile(r"\{\{(table|figure):([^}|]+)(?:\|([^}]*))?\}\}")


def fill(text: str, results: str, out: str) -> tuple[str, list[str]]:
    """Replace placeholders; returns the text and the list of suites whose results are missing."""
    missing: list[str] = []

    def replace(match: re.Match) -> str:
        kind, ref, caption = match.group(1), match.group(2).strip(), (match.group(3) or "").strip()
        if kind == "table":
            path = os.path.join(results, ref, "tables", f"{ref}.md")
            if not os.path.isfile(path):
                missing.append(ref)
                return f"*Table not generated yet: run `python -m benchmarks.run suite={ref}`.*"
            with open(path) as fh:
                return fh.read().strip()
        suite, name = ref.split("/", 1)
        path = os.path.join(results, suite, "figures", name)
        if not os.path.isfile(path):
            missing.append(suite)
            return f"*Figure not generated yet: run `python -m benchmarks.run suite={suite}`.*"
        target = os.path.join(out, "figures", f"{suite}_{name}")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(path, target)
        return f"![{caption}](figures/{suite}_{name})\n\n*{caption}*"

    from benchmarks.report import fill_blocks

    text = fill_blocks(text, {}, results)
    missing += [m.group(1) for m in re.finditer(r"<!-- table:([^ >]+) -->\n\*Table not generated yet", text)]
    return PLACEHOLDER.sub(replace, text), sorted(set(missing))


def build(out: str | None = None, results: str = RESULTS, pdf: bool = True) -> list[str]:
    out = out or os.path.join(HERE, "build")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(HERE, "paper.md")) as fh:
        text, missing = fill(fh.read(), results, out)
    md_path = os.path.join(out, "paper.md")
    with open(md_path, "w") as fh:
        fh.write(text)
    import markdown

    body = markdown.markdown(text, extensions=["tables", "fenced_code"])
    html_path = os.path.join(out, "paper.html")
    with open(html_path, "w") as fh:
        fh.write(
            "<!doctype html><html><head><meta charset='utf-8'><title>da</title><style>"
            "body{max-width:52em;margin:2em auto;font-family:serif;line-height:1.45;padding:0 1em}"
            "table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #bbb;padding:.2em .5em}"
            "img{max-width:100%}</style></head><body>\n" + body + "\n</body></html>\n"
        )
    written = [md_path, html_path]
    if pdf and shutil.which("pandoc") and (shutil.which("xelatex") or shutil.which("pdflatex")):
        engine = "xelatex" if shutil.which("xelatex") else "pdflatex"
        pdf_path = os.path.join(out, "paper.pdf")
        subprocess.run(["pandoc", "paper.md", "-o", "paper.pdf", f"--pdf-engine={engine}"], cwd=out, check=True)
        written.append(pdf_path)
    for suite in missing:
        print(f"note: suite {suite} has no generated results yet (python -m benchmarks.run suite={suite})")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the paper from paper.md and the generated results.")
    parser.add_argument("--out", default=None, help="output folder (default paper/build)")
    parser.add_argument("--no-pdf", action="store_true")
    args = parser.parse_args()
    for path in build(args.out, pdf=not args.no_pdf):
        print(os.path.relpath(path))


if __name__ == "__main__":
    main()
