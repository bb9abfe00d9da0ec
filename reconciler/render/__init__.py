"""Render a release for an environment into the bytes of `compose.stella.lock.yml`.

PURE: takes a `ReleaseLock`, an `Environment` and a template's text, returns bytes. It must not touch the
disk, the network, the clock (but for the monotonic one that stops a render, see `budget`) or Git, and
must not see a secret's value: the caller reads the template from the repository at the decision's commit
and passes its text in; templates get secret NAMES only, and a secret is written as the literal `${NAME}`
that Docker Compose interpolates on the host.

A render runs the template (`sandbox`, Jinja2 in a sandbox that keeps to a `budget`), normalises what it
wrote into a lock (`compose`, at the YAML node level: `yamlnodes`), and checks the final bytes
(`lockfile`), among them that the lock takes from the host only what the environment allows
(`hostaccess`). `check()` then validates the final bytes, and `render()` returns them only if they pass.
Same inputs, same bytes. `lock_images()` lists every image of a lock, so that each becomes a subject of
the evidence statement.

This package is the public surface: `render`, `check`, `lock_images`, `RenderError`, `LOCK_FILE`,
`DEFAULT_TEMPLATE`, `HEADER`, `STATE_DIR_VAR` (the one variable besides secrets a lock may interpolate,
at the start of a bind source: the agent's state directory) and the `RENDER_TIMEOUT` setting. Importing
it must not import jinja2 (the CLI and the pre-receive hook import it for its constants): only
`render()` imports `sandbox`, when it runs a template.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..models import Environment, ReleaseLock
from .compose import HEADER as HEADER  # public: the first line of every lock
from .compose import _normalise
from .hostaccess import STATE_DIR_VAR
from .lockfile import LOCK_FILE, _check, check, lock_images
from .problems import RenderError

__all__ = ["DEFAULT_TEMPLATE", "LOCK_FILE", "STATE_DIR_VAR", "RenderError", "check", "lock_images", "render"]

RenderError.__module__ = __name__  # where callers import it from (reprs, pickling)

DEFAULT_TEMPLATE = """\
{#- Stella's built-in template: one service per component, digest-pinned; secrets stay ${NAME} references. #}
services:
{% for name, c in components.items() %}
  {{ name | tojson }}:
    image: {{ c.pinned }}
{% if variables or secrets %}
    environment:
{% for key, value in variables.items() %}
      {{ key }}: {{ value | tojson }}
{% endfor %}
{% for key in secrets %}
      {{ key }}: {{ secret(key) | tojson }}
{% endfor %}
{% endif %}
    restart: unless-stopped
{% endfor %}
"""

_BUILTIN = "<built-in template>"


def _timeout_setting(default: float = 2.0) -> float:
    """`STELLA_RENDER_TIMEOUT` in seconds (read once, at import); `default` when unset or not positive."""
    try:
        value = float(os.environ.get("STELLA_RENDER_TIMEOUT", default))
    except ValueError:
        return default
    return value if 0 < value < float("inf") else default


RENDER_TIMEOUT = _timeout_setting()
"""How long one render may take (wall clock) before it is a RenderError."""


def render(
    release: ReleaseLock,
    environment: Environment,
    template: str | None,
    *,
    template_path: str | None = None,
    forbidden: Sequence[str] = (),
) -> bytes:
    """The bytes of `compose.stella.lock.yml` for `release` in `environment`.

    `template` is the template's text (None: `DEFAULT_TEMPLATE`); `template_path` is the name errors
    use for it (default: the environment's `template`). `forbidden` are secret values the caller knows;
    the output must not contain any of them. Raises RenderError for a bad template or a bad output; the
    output is also held to `check()` with `environment`: only its secrets, its `allowedImages` besides
    the release's, and only the host access its `hostAccess` allows.
    """
    from .sandbox import _JINJA_FILENAME, _context, _run_template  # jinja2: only to run a template

    source = DEFAULT_TEMPLATE if template is None else template
    where = template_path or (_BUILTIN if template is None else environment.template or _JINJA_FILENAME)
    text = _run_template(source, _context(release, environment), where, RENDER_TIMEOUT)
    try:
        data = _normalise(text, release, environment, where).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RenderError(f"rendered output cannot be encoded as UTF-8: {exc.reason}", file=where) from None
    _check(data, release, forbidden, frozenset(environment.secrets), where, environment)
    return data
