"""Names from data sets and run folders made safe for the place they are written: one helper per medium.

Domain, class and folder names come from the user's files and may hold anything. ``markdown_cell`` keeps a
Markdown table a table and its HTML inert (Python-Markdown and mkdocs pass raw HTML through); ``csv_cell`` keeps
a spreadsheet from reading a cell as a formula (OWASP's CSV-injection advice: prefix ``'`` to a cell starting with
``= + - @``, tab or carriage return); ``terminal`` shows control characters (escape sequences) as ``\\x1b`` text.
"""

from __future__ import annotations

import html
import re
from typing import Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?%?$")


def markdown_cell(value: Any) -> str:
    """``value`` as the text of one Markdown table cell: HTML escaped, ``|`` escaped, line breaks as spaces."""
    text = html.escape(str(value), quote=False)
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    return re.sub(r"[\r\n]+", " ", terminal(text) if _CONTROL.search(text) else text)


def csv_cell(value: Any) -> Any:
    """``value`` for a CSV cell: a string a spreadsheet would read as a formula gets a leading ``'``; numbers
    (also negative ones, written as numbers) pass unchanged."""
    if not isinstance(value, str) or not value.startswith(FORMULA_START) or _NUMBER.match(value):
        return value
    return "'" + value


def terminal(value: Any) -> str:
    """``value`` for a terminal: control characters (ESC and the rest of C0/C1, not newline or tab) as escapes."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(value))
