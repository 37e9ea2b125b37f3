"""A griffe extension for the API pages: the two reST habits of this code base that mkdocstrings does not read.

* ``Example::`` and its indented block close most class docstrings, after the ``:param x:`` fields; griffe's
  Sphinx-style parser would read it as part of the last parameter. It is moved before the fields, as a
  fenced Python block.
* Cross-reference roles (``:class:`HveError```, ``:meth:`~.core.HveSandbox.start```) would show as typed;
  they become code spans of the name (the last component after a ``~``).

The source stays plain reST, as Sphinx and IDEs read it; only the rendered pages change.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

_FIELD = re.compile(r"^:(param|type|return|returns|rtype|raises|raise|var|ivar|cvar)\b")
_EXAMPLE = re.compile(r"^(Examples?)::\s*$")
_ROLE = re.compile(r":(?:class|meth|mod|attr|func|data|exc|obj):`(~?)([^`]+)`")


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target.lstrip('.')}`"


def rewrite(text: str) -> str:
    """Return ``text`` with its example block fenced (and moved before the fields) and roles as code spans."""
    lines = _ROLE.sub(_role, text).splitlines()
    start = next((i for i, line in enumerate(lines) if _EXAMPLE.match(line)), None)
    if start is None:
        return "\n".join(lines)
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith((" ", "\t"))):
        end += 1
    code = textwrap.dedent("\n".join(lines[start + 1 : end])).strip("\n")
    block = [lines[start].strip()[:-1], "", "```python", code, "```", ""]
    rest = lines[:start] + lines[end:]
    first_field = next((i for i, line in enumerate(rest) if _FIELD.match(line)), None)
    at = first_field if first_field is not None and first_field < start else start
    return "\n".join(rest[:at] + block + rest[at:]).rstrip()


class RestExamples(griffe.Extension):
    """Apply :func:`rewrite` to every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
