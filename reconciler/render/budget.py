"""The budget of a render: no template can hang or exhaust the reconciler (`reconcile`, `plan`, `why`).

    steps         at most 1,000,000: each loop iteration, each item a filter iterates (`map`, `select`,
                  `sort`, `sum`, `list`...), each call, filter, operator, `~` and list/tuple/dict literal
    time          `RENDER_TIMEOUT` seconds of wall clock (2; `STELLA_RENDER_TIMEOUT`, read at import), the
                  backstop for steps that are slow in themselves
    size          no value it builds spells out more than 1 MiB (a string, a list with its items, a number),
                  refused before it is built where its size can be foreseen (`*`, `**`, `%`, `format`,
                  `str.format`, `join`, `replace`, `center`, `indent`, `wordwrap`, `batch`, `~`...)
                  and checked after every operator, filter, call, literal and `{{ ... }}`
    in all        at most 64 MiB of values built, added up over the render
    output        at most 1 MiB, counted as it streams

The sandbox's hooks (`sandbox`) check it from inside the render (plain Python: no thread, signal or
tracing), and spending it is a RenderError naming the template and, where Jinja knows it, the line:
`rendering took more than 1000000 steps (the budget of a template)`, `rendering took longer than 2 s
(...)`, `builds a value larger than 1048576 bytes (...)`, `builds more than 67108864 bytes of values in
all (...)`. The clock only ever stops a render; it never changes what a render writes.

This module holds the budget (`_Budget`, set for one render in `_CURRENT`), the weights of values and the
checks that foresee what an operation would build. It must not build a template nor decide what one may
do beyond its cost (that is `sandbox`), and no module but `sandbox` may import it: it imports jinja2.
"""

from __future__ import annotations

import contextvars
import re
import string
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

from jinja2.runtime import Undefined
from jinja2.utils import Cycler, Namespace

_MAX_OUTPUT = 1 << 20
_MAX_VALUE = _MAX_OUTPUT
"""The most bytes any one value a template builds may spell out (a string, a list, a number...)."""
_MAX_BUILT = 64 * _MAX_OUTPUT
"""The most bytes the values a render builds may add up to (what it allocates, at most)."""
_MAX_STEPS = 1_000_000
"""The most steps a render may take: loop iterations, items a filter iterates, calls, filters, operators."""
_BUDGET_NOTE = "(the budget of a template)"


class _OverBudget(Exception):
    """Raised from inside a template that spent its budget; `_run_template` makes it a RenderError."""


class _Unbudgeted(Exception):
    """A hook ran with no budget set: only `_run_template` compiles and runs templates, with one."""


def _text_size(text: str) -> int:
    """The UTF-8 length of `text` (exact; cheap for ASCII, and at least `len(text)`)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _digits(number: int) -> int:
    """About how many characters `number` takes in decimal (sign included)."""
    return number.bit_length() * 30103 // 100000 + 2


def _weight(value: Any, limit: int = _MAX_VALUE) -> int:
    """About how many bytes `value` spells out (its `str()`, `repr()` or JSON); stops counting past `limit`.

    Containers count their items each time they appear, so that `[a, a, a, a]` nested ten deep weighs what
    printing, comparing or hashing it would walk, not the little memory it shares. Each item adds at least
    one, so a cyclic value is simply too heavy. Objects of no known shape weigh 64 (a repr).
    """
    total = 0
    pending = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is list or kind is tuple:  # the common shapes first: isinstance() of an ABC is slow
            total += 2 + 2 * len(item)
            if total <= limit:
                pending.extend(item)
        elif kind is dict:
            total += 2 + 4 * len(item)
            if total <= limit:
                pending.extend(item.keys())
                pending.extend(item.values())
        elif isinstance(item, str):
            total += len(item) if len(item) > limit else _text_size(item)
        elif isinstance(item, bytes | bytearray):
            total += len(item)
        elif isinstance(item, Undefined):  # StrictUndefined refuses len() and iter(): it spells nothing
            total += 1
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += _digits(item)
        elif isinstance(item, float | range):
            total += 24
        elif isinstance(item, Mapping):
            total += 2 + 4 * len(item)
            if total <= limit:
                pending.extend(item.keys())
                pending.extend(item.values())
        elif isinstance(item, Namespace):  # `{% set ns.x = ... %}` stores into it unchecked: weigh it here
            total += 16
            pending.append(object.__getattribute__(item, "_Namespace__attrs"))
        elif isinstance(item, Cycler):
            total += 16
            pending.append(item.items)
        elif isinstance(item, Collection):
            total += 2 + 2 * len(item)
            if total <= limit:
                pending.extend(item)
        else:
            total += 64
        if total > limit:
            return total
    return total


def _fresh_size(value: Any) -> int:
    """What building `value` took at most, beyond what it refers to: text bytes, or 8 per reference."""
    if isinstance(value, str):
        return _text_size(value)
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, Collection) and not isinstance(value, range | Undefined):
        return 8 * len(value)
    return 0


class _Budget:
    """What one render may still spend; the hooks of `_Sandbox` charge it and raise `_OverBudget`.

    Steps are counted (loop iterations, items a filter iterates, calls, filters, operators, literals,
    `~`), so the usual limit does not depend on the machine; the clock is the backstop for a step that is
    slow in itself. Sizes are checked on every value a template builds, before it is built where the size
    can be foreseen (`*`, `%`, `format`, `center`, `replace`, `join`, ...), and added up over the render.
    """

    __slots__ = ("built", "deadline", "steps", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.steps = 0
        self.built = 0

    def tick(self) -> None:
        self.steps += 1
        if self.steps > _MAX_STEPS:
            raise _OverBudget(f"rendering took more than {_MAX_STEPS} steps {_BUDGET_NOTE}")
        if time.monotonic() > self.deadline:
            raise _OverBudget(f"rendering took longer than {self.timeout:g} s {_BUDGET_NOTE}")

    def fits(self, size: int) -> None:
        if size > _MAX_VALUE:
            raise _OverBudget(f"builds a value larger than {_MAX_VALUE} bytes {_BUDGET_NOTE}")

    def spend(self, size: int) -> None:
        self.built += size
        if self.built > _MAX_BUILT:
            raise _OverBudget(f"builds more than {_MAX_BUILT} bytes of values in all {_BUDGET_NOTE}")

    def weigh(self, *values: Any) -> None:
        """Refuse an operand that is too large to print, compare or hash (only a namespace can be)."""
        for value in values:
            if not isinstance(value, int | float | str | Undefined | None):
                self.fits(_weight(value))

    def keep(self, value: Any) -> Any:
        """Check and charge a value a template built; an iterator comes back counting its items."""
        self.fits(_weight(value))
        self.spend(_fresh_size(value))
        if isinstance(value, Iterator) and not isinstance(value, _Counted):
            return _Counted(value, self)
        return value

    def counted(self, iterable: Any) -> _Counted:
        return iterable if isinstance(iterable, _Counted) else _Counted(iterable, self)


_CURRENT: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "stella_render_budget", default=None
)


def _budget() -> _Budget:
    budget = _CURRENT.get()
    if budget is None:
        raise _Unbudgeted("a template value outside a render")
    return budget


class _Counted:
    """Iterates `source`, spending one step of the render's budget per item."""

    __slots__ = ("_budget", "_iterator", "_source")

    def __init__(self, source: Any, budget: _Budget) -> None:
        self._iterator = iter(source)
        self._source = source
        self._budget = budget

    def __iter__(self) -> _Counted:
        return self

    def __next__(self) -> Any:
        self._budget.tick()
        return next(self._iterator)

    def __repr__(self) -> str:
        return repr(self._source)


# printf-style directives: %[(key)][flags][width][.precision][length]type
_PRINTF_RE = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?[-#0 +]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?[hlL]?(?P<type>.)?", re.S
)
_NUMBER_RE = re.compile(r"\d+")


def _number(digits: str) -> int:
    return int(digits) if len(digits) <= 9 else _MAX_VALUE + 1


def _printf_size(template: Any, values: Any) -> int:
    """An upper bound of the size of `template % values` (each directive: its width, precision and value)."""
    text = template.decode("latin-1") if isinstance(template, bytes | bytearray) else str(template)
    positional = iter(values if isinstance(values, tuple) else (values,))
    mapping = values if isinstance(values, Mapping) else None
    size = len(text)
    for match in _PRINTF_RE.finditer(text):
        if match.group("type") == "%":
            continue
        for number in (match.group("width"), match.group("precision")):
            if number == "*":
                star = next(positional, 0)
                size += star if isinstance(star, int) and star > 0 else 0
            elif number:
                size += _number(number)
        key = match.group("key")
        value = mapping.get(key) if key is not None and mapping is not None else next(positional, None)
        size += _weight(value)
        if size > _MAX_VALUE:
            break
    return size


def _spec_size(spec: str) -> int:
    """The largest number in a format spec (its width or precision): what it can pad a field to."""
    return max((_number(n) for n in _NUMBER_RE.findall(spec)), default=0)


class _FormatterMixin(string.Formatter):
    """`str.format` that refuses a field padded past the budget, and adds up what it wrote."""

    _written = 0

    def vformat(self, format_string: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        self._written = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def format_field(self, value: Any, format_spec: str) -> Any:
        budget = _budget()
        budget.fits(_spec_size(format_spec) + _weight(value))
        text = super().format_field(value, format_spec)
        self._written += len(text)
        budget.fits(self._written)
        return text


def _foreseen_call(
    obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any], budget: _Budget
) -> tuple[Any, ...]:
    """Refuse a method call on a string, bytes or int that would build a value past the budget.

    Returns the arguments to call with (`join` gets its items as a list, counted as they are read).
    """
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", None)
    if isinstance(owner, str | bytes | bytearray):
        if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
            budget.fits(args[0])
        elif name == "expandtabs":
            tabsize = args[0] if args else kwargs.get("tabsize", 8)
            if isinstance(tabsize, int):
                tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
                budget.fits(len(owner) + tabs * tabsize)
        elif name == "replace" and len(args) >= 2 and all(isinstance(a, type(owner)) for a in args[:2]):
            old, new = args[0], args[1]
            count = args[2] if len(args) > 2 else kwargs.get("count", -1)
            times = owner.count(old) if old else len(owner) + 1
            if isinstance(count, int) and count >= 0:
                times = min(times, count)
            budget.fits(len(owner) + times * (len(new) - len(old)))
        elif name == "join" and args:
            args = (_joined(budget, args[0], len(owner)), *args[1:])
        elif name == "translate" and isinstance(owner, str) and args:
            table = args[0]
            values = (
                table.values()
                if isinstance(table, Mapping)
                else table
                if isinstance(table, list | tuple)
                else ()
            )
            longest = max((len(v) for v in values if isinstance(v, str)), default=1)
            budget.fits(len(owner) * max(longest, 1))
    elif isinstance(owner, int) and name == "to_bytes":
        length = args[0] if args else kwargs.get("length", 1)
        if isinstance(length, int):
            budget.fits(length)
    return args


# Filters that only iterate their value: handed an iterator counting its items, they return the same.
_ITERATING_FILTERS = frozenset(
    {
        "batch",
        "groupby",
        "list",
        "map",
        "max",
        "min",
        "reject",
        "rejectattr",
        "select",
        "selectattr",
        "slice",
        "sort",
        "sum",
        "unique",
    }
)


def _check_center(budget: _Budget, a: dict[str, Any]) -> None:
    if isinstance(a["width"], int):
        budget.fits(a["width"])


def _check_indent(budget: _Budget, a: dict[str, Any]) -> None:
    width = a["width"]
    if isinstance(width, int):
        budget.fits(width)
    prefix = width if isinstance(width, int) else len(str(width))
    text = str(a["s"])
    budget.fits(len(text) + (text.count("\n") + 2) * prefix)


def _check_wordwrap(budget: _Budget, a: dict[str, Any]) -> None:
    width = a["width"]
    if not isinstance(width, int) or width < 1:
        return  # textwrap refuses it
    text = str(a["s"])
    wrap = a["environment"].newline_sequence if a["wrapstring"] is None else str(a["wrapstring"])
    lines = len(text.split()) + len(text) // width + text.count("\n") + 1
    budget.fits(len(text) + lines * len(wrap))


def _check_replace(budget: _Budget, a: dict[str, Any]) -> None:
    text, old, new, count = str(a["s"]), str(a["old"]), str(a["new"]), a["count"]
    times = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        times = min(times, count)
    budget.fits(len(text) + times * (len(new) - len(old)))


def _joined(budget: _Budget, items: Any, separator: int) -> list[Any]:
    """`items` as a list (read a step per item) once joining them by `separator` chars fits the budget."""
    if isinstance(items, Collection) and not isinstance(items, Undefined):
        budget.fits(separator * (len(items) - 1))  # before reading a million items of a string
    listed = list(budget.counted(items))
    budget.fits(_weight(listed) + separator * (len(listed) - 1))
    return listed


def _check_join(budget: _Budget, a: dict[str, Any]) -> Any:
    return _joined(budget, a["value"], len(str(a["d"])))


def _check_format(budget: _Budget, a: dict[str, Any]) -> None:
    budget.fits(_printf_size(a["value"], a["kwargs"] or a["args"]))


def _check_batch(budget: _Budget, a: dict[str, Any]) -> None:
    if a["fill_with"] is not None and isinstance(a["linecount"], int):
        budget.fits(a["linecount"] * (_weight(a["fill_with"]) + 2))


def _check_slice(budget: _Budget, a: dict[str, Any]) -> None:
    if isinstance(a["slices"], int):
        budget.fits(4 * a["slices"])  # as many lists, each at least `[], `


def _check_urlize(budget: _Budget, a: dict[str, Any]) -> None:
    text = str(a["value"])
    extra = 64 + len(str(a["target"] or "")) + len(str(a["rel"] or ""))
    links = sum(1 for word in text.split() if any(c in word for c in ".@:"))
    budget.fits(2 * len(text) + links * extra)


_FILTER_CHECKS: dict[str, Callable[[_Budget, dict[str, Any]], Any]] = {
    "center": _check_center,
    "indent": _check_indent,
    "wordwrap": _check_wordwrap,
    "replace": _check_replace,
    "join": _check_join,
    "format": _check_format,
    "batch": _check_batch,
    "slice": _check_slice,
    "urlize": _check_urlize,
}
"""Checks of what a filter would build, given its arguments by name; one may return the value to use."""
