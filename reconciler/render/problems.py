"""The errors of a render: `RenderError`, which callers see, and `_YamlProblem`, found at a YAML node.

A `_YamlProblem` never leaves the package: `_output_error` turns it into a RenderError naming the file
and the line. This module must not import any other module of this package (they all import it).
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInput


class RenderError(InvalidInput):
    """A template or its output is unusable; `file` names the template, the message says what is wrong."""


class _YamlProblem(Exception):
    def __init__(self, message: str, mark: Any) -> None:  # a yaml Mark (pure or libyaml) or None
        super().__init__(message)
        self.message = message
        self.line = None if mark is None else mark.line + 1


def _output_error(where: str, what: str, problem: _YamlProblem) -> RenderError:
    at = f" (line {problem.line})" if problem.line is not None else ""
    return RenderError(f"{what}{at}: {problem.message}", file=where)
