"""Run a template: Jinja2 in an immutable sandbox that spends a budget (`budget`) in every step.

Templates run with `StrictUndefined`, no autoescape, no loader (no `include`/`import`/`extends`),
`trim_blocks` and `lstrip_blocks` (a line holding only a `{% ... %}` tag leaves nothing behind), and
without Jinja's non-deterministic `random` filter and `lipsum` global. The context is:

    release       {name, id}
    environment   {name}
    components    {name: {image, tag, digest, pinned}}, sorted by name (`pinned` = `image@digest`)
    variables     {NAME: value}, sorted; every `$` already doubled (`$$`) so Compose keeps it literal
    secrets       [NAME, ...], sorted: the names only
    secret(NAME)  -> "${NAME}"; an error for a name the environment does not declare
    | tojson      JSON text that is also a safe YAML scalar (quotes, `:`/`#`/`{`, line breaks, control chars)

Jinja's code generator is hooked so that loops, `~` and literals charge the budget; every filter is
wrapped to charge it too. Anything a template raises is a RenderError naming the template and, where
Jinja knows it, the line. Only this module and `budget` (which only it imports) import jinja2, and only
`render()` imports this one, when it runs a template. It must not look at what the template wrote (that
is `compose`).
"""

from __future__ import annotations

import functools
import inspect
import json
import types
from collections.abc import Callable, Generator, Iterable
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from markupsafe import Markup

from ..models import Environment, ReleaseLock
from .budget import (
    _CURRENT,
    _FILTER_CHECKS,
    _ITERATING_FILTERS,
    _MAX_OUTPUT,
    _MAX_VALUE,
    _Budget,
    _budget,
    _Counted,
    _digits,
    _foreseen_call,
    _FormatterMixin,
    _OverBudget,
    _printf_size,
    _text_size,
    _weight,
)
from .problems import RenderError
from .yamlnodes import _UNSAFE_IN_YAML_RE

_JINJA_FILENAME = "<template>"
_MAX_EXPONENT = 256


class _TemplateProblem(Exception):
    """Raised from inside a template (e.g. `secret()` of an undeclared name)."""


class _Formatter(_FormatterMixin, SandboxedFormatter):
    pass


class _EscapeFormatter(_FormatterMixin, SandboxedEscapeFormatter):
    pass


def _binder(
    func: Callable[..., Any], passes: bool
) -> Callable[[tuple[Any, ...], dict[str, Any]], dict[str, Any] | None]:
    """A cheap `inspect.Signature.bind` for a filter's arguments: by name, defaults filled; None when the
    arguments do not fit (the call itself then says why)."""
    inner = inspect.unwrap(func)
    params = list(inspect.signature(inner).parameters.values())
    if passes and getattr(inner, "jinja_pass_arg", None) is None:
        # an async_variant wrapper takes the eval context that the sync function it wraps does not
        params.insert(0, inspect.Parameter("eval_ctx", inspect.Parameter.POSITIONAL_ONLY))
    kind = inspect.Parameter
    positional = [p.name for p in params if p.kind in (kind.POSITIONAL_ONLY, kind.POSITIONAL_OR_KEYWORD)]
    named = {p.name for p in params if p.kind in (kind.POSITIONAL_OR_KEYWORD, kind.KEYWORD_ONLY)}
    required = {
        p.name
        for p in params
        if p.default is kind.empty and p.kind not in (kind.VAR_POSITIONAL, kind.VAR_KEYWORD)
    }
    defaults = {p.name: p.default for p in params if p.default is not kind.empty}
    var_args = next((p.name for p in params if p.kind is kind.VAR_POSITIONAL), None)
    var_kwargs = next((p.name for p in params if p.kind is kind.VAR_KEYWORD), None)

    def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        arguments = dict(defaults)
        arguments.update(zip(positional, args, strict=False))
        if len(args) > len(positional):
            if var_args is None:
                return None
            arguments[var_args] = args[len(positional) :]
        elif var_args is not None:
            arguments[var_args] = ()
        extra = {}
        for key, value in kwargs.items():
            if key in named:
                arguments[key] = value
            else:
                extra[key] = value
        if var_kwargs is not None:
            arguments[var_kwargs] = extra
        elif extra:
            return None
        return arguments if required <= arguments.keys() else None

    return bind


def _guarded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` charging the budget: a step, its operands' weight, what it would build, what it built."""
    passes = getattr(func, "jinja_pass_arg", None) is not None  # context/eval context/environment first
    offset = 1 if passes else 0
    check = _FILTER_CHECKS.get(name)
    bind = _binder(func, passes) if check is not None else None
    iterates = name in _ITERATING_FILTERS

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()  # compiling (Jinja folds filters of constants) has a budget too: see _run_template
        budget.tick()
        budget.weigh(*args[offset:], *kwargs.values())
        if check is not None and bind is not None and (arguments := bind(args, kwargs)) is not None:
            value = check(budget, arguments)
            if value is not None:
                args = (*args[:offset], value, *args[offset + 1 :])
        if iterates and len(args) > offset:
            args = (*args[:offset], budget.counted(args[offset]), *args[offset + 1 :])
        return budget.keep(func(*args, **kwargs))

    return guarded


def _hooked(hook: str, node: nodes.Expr) -> nodes.Call:
    """The expression `environment.<hook>(<node>)` (Jinja allows no node types of one's own)."""
    attribute = nodes.EnvironmentAttribute(hook, lineno=node.lineno, environment=node.environment)
    return nodes.Call(attribute, [node], [], None, None, lineno=node.lineno, environment=node.environment)


class _CodeGenerator(CodeGenerator):
    """Jinja's compiler, with the budget's hooks around loops, `~` and literals.

    Loops iterate through `stella_iterate` (a step per item), `~` goes through `stella_concat` (the parts
    are weighed before they are joined) and list, tuple and dict literals through `stella_literal`.
    """

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        for loop in list(node.find_all(nodes.For)):
            assert isinstance(loop.iter, nodes.Expr)
            loop.iter = _hooked("stella_iterate", loop.iter)
        super().visit_Template(node, frame)

    def visit_Call(self, node: nodes.Call, frame: Frame, forward_caller: bool = False) -> None:
        hook = node.node
        if isinstance(hook, nodes.EnvironmentAttribute) and hook.name.startswith("stella_"):
            self.write(f"environment.{hook.name}(")  # ours: not through the sandbox's call()
            self.visit(node.args[0], frame)
            self.write(")")
        else:
            super().visit_Call(node, frame, forward_caller=forward_caller)

    @optimizeconst  # as Jinja's: `~` of constants is joined at compile time (its size is the template's)
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.stella_concat({join}, (")
        for part in node.nodes:
            self.visit(part, frame)
            self.write(", ")
        self.write("))")

    def _literal(self, visit: Callable[[], None]) -> None:
        self.write("environment.stella_literal(")
        visit()
        self.write(")")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self._literal(lambda: super(_CodeGenerator, self).visit_List(node, frame))

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self._literal(lambda: super(_CodeGenerator, self).visit_Dict(node, frame))

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx == "store":
            super().visit_Tuple(node, frame)
        else:
            self._literal(lambda: super(_CodeGenerator, self).visit_Tuple(node, frame))


def _finalize(value: Any) -> Any:
    """What `{{ ... }}` prints: the value, once it is known not to spell out more than the budget."""
    budget = _budget()
    size = _weight(value)
    budget.fits(size)
    if not isinstance(value, str):
        budget.spend(size)  # str() builds it
    return value


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, spending a budget (`_Budget`) in every loop, call, filter and operator."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.tick()
        budget.weigh(left, right)
        if operator == "**" and isinstance(right, int) and right > _MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is too large (at most {_MAX_EXPONENT})")
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
            budget.fits(_digits(left) * right)
        if operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                budget.fits(_digits(left) + _digits(right))
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | bytes | list | tuple) and isinstance(n, int) and n > 0:
                    budget.fits(_weight(seq, _MAX_VALUE // n) * n)
        if operator == "%" and isinstance(left, str | bytes):
            budget.fits(_printf_size(left, right))
        return budget.keep(super().call_binop(context, operator, left, right))

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        budget.weigh(*args, *kwargs.values())
        if isinstance(obj, LoopContext) and args:  # `loop(children)` in a recursive loop
            args = (budget.counted(args[0]), *args[1:])
        obj = self.wrap_str_format(obj) or obj  # Jinja before 3.1.5 hands out `str.format` itself
        args = _foreseen_call(obj, args, kwargs, budget)
        return budget.keep(super().call(context, obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`str.format`/`format_map` through a formatter that keeps to the budget (see `_FormatterMixin`)."""
        if not isinstance(value, types.MethodType | types.BuiltinMethodType) or value.__name__ not in (
            "format",
            "format_map",
        ):
            return None
        f_self = value.__self__
        if not isinstance(f_self, str):
            return None
        formatter: _FormatterMixin
        if isinstance(f_self, Markup):
            formatter = _EscapeFormatter(self, escape=f_self.escape)
        else:
            formatter = _Formatter(self)
        is_format_map = value.__name__ == "format_map"

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs, args = args[0], ()
            return type(f_self)(formatter.vformat(f_self, args, kwargs))

        return functools.update_wrapper(wrapper, value)

    def concat(self, parts: Iterable[str]) -> str:
        """Join a macro's, block's or `{% set %}` block's output, refusing it past the budget."""
        budget = _budget()
        kept, size = [], 0
        for part in parts:
            size += len(part)
            budget.fits(size)
            kept.append(part)
        return budget.keep("".join(kept))  # type: ignore[no-any-return]

    def stella_iterate(self, iterable: Any) -> _Counted:
        return _budget().counted(iterable)

    def stella_concat(self, join: Callable[[Iterable[Any]], str], parts: tuple[Any, ...]) -> str:
        budget = _budget()
        budget.tick()
        size = 0
        for part in parts:
            size += _weight(part)
            budget.fits(size)
        return budget.keep(join(parts))  # type: ignore[no-any-return]

    def stella_literal(self, value: Any) -> Any:
        budget = _budget()
        budget.tick()
        return budget.keep(value)


def _yaml_safe_json(value: Any) -> str:
    """`tojson` for YAML: JSON text whose every string is also a double-quoted YAML scalar of that value."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return _UNSAFE_IN_YAML_RE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


def _sandbox() -> _Sandbox:
    env = _Sandbox(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        loader=None,
        finalize=_finalize,
    )
    env.filters["tojson"] = _yaml_safe_json
    del env.filters["random"]
    del env.globals["lipsum"]
    for name, func in list(env.filters.items()):
        env.filters[name] = _guarded_filter(name, func)
    return env


def _context(release: ReleaseLock, environment: Environment) -> dict[str, Any]:
    declared = sorted(environment.secrets)

    def secret(name: str) -> str:
        if name not in environment.secrets:
            names = ", ".join(declared) or "none"
            raise _TemplateProblem(
                f"secret({name!r}): environment {environment.name} has no such secret (declared: {names})"
            )
        return "${" + name + "}"

    components = {
        name: {"image": c.image, "tag": c.tag, "digest": c.digest, "pinned": c.pinned}
        for name, c in sorted(release.components.items())
    }
    return {
        "release": {"name": release.name, "id": release.id},
        "environment": {"name": environment.name},
        "components": components,
        "variables": {k: v.replace("$", "$$") for k, v in sorted(environment.variables.items())},
        "secrets": declared,
        "secret": secret,
    }


def _template_line(exc: BaseException) -> int | None:
    """The template line Jinja maps the failing frame to, if the traceback reaches the template."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _JINJA_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


@functools.lru_cache(maxsize=64)
def _compile(source: str) -> Template:
    """Compiled templates by their text (a pass renders the same template for many promotions)."""
    return _sandbox().from_string(source)


def _run_template(source: str, context: dict[str, Any], where: str, timeout: float) -> str:
    """What the template `source` writes for `context`, within the budget (`timeout`: its wall clock)."""
    token = _CURRENT.set(_Budget(timeout))  # Jinja folds constants when compiling: a budget of its own
    try:
        compiled = _compile(source)
    except TemplateSyntaxError as exc:
        raise RenderError(f"template syntax error: {exc.message}", file=where, line=exc.lineno) from exc
    finally:
        _CURRENT.reset(token)
    parts: list[str] = []
    size = 0
    token = _CURRENT.set(_Budget(timeout))
    stream = compiled.generate(context)
    assert isinstance(stream, Generator)  # Template.generate is a generator function
    try:
        for chunk in stream:
            size += _text_size(chunk)
            if size > _MAX_OUTPUT:
                raise RenderError(f"template output is larger than {_MAX_OUTPUT} bytes", file=where)
            parts.append(chunk)
    except RenderError:
        raise
    except _OverBudget as exc:
        raise RenderError(str(exc), file=where, line=_template_line(exc)) from None
    except SecurityError as exc:
        raise RenderError(
            f"refused by the template sandbox: {exc}", file=where, line=_template_line(exc)
        ) from exc
    except Exception as exc:  # anything a template raises is a problem of that template
        raise RenderError(f"template error: {exc}", file=where, line=_template_line(exc)) from exc
    finally:
        stream.close()
        _CURRENT.reset(token)
    return "".join(parts)
