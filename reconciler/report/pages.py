"""The report's pages: the packaged Jinja2 templates (`reconciler/templates/report/`), rendered to disk.

Templates are loaded from the installed package and autoescaped (every value read from the branch is
shown as text); the stylesheet is included inline by the base template. A page is streamed to a
temporary file as the template produces it, then moved into place.

Must not: import jinja2 before a page is rendered (importing `reconciler.report` stays cheap for the
CLI), build view data (that is the rest of the package), or load anything a page would fetch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

TEMPLATES = "templates/report"
"""Where the templates are, inside the `reconciler` package."""


def template_environment() -> jinja2.Environment:
    """The Jinja2 environment of the report's templates."""
    import jinja2  # only rendering a report needs it

    return jinja2.Environment(
        loader=jinja2.PackageLoader("reconciler", TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def write_page(template: jinja2.Template, context: Mapping[str, Any], path: Path) -> None:
    """Render `template` into `path`, chunk by chunk, replacing any file there at the end."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for chunk in template.generate(context):
            fh.write(chunk)
    os.replace(tmp, path)
