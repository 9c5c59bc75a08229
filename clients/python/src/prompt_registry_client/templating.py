"""Sandboxed Jinja2 rendering shared by the registry service and this client.

The service renders prompts with exactly this code, so an app that renders
locally gets byte-identical output. Templates are written by people with the
``write`` scope and variables come from apps, so the sandbox has two jobs:

* no escape to Python internals (Jinja2's immutable sandbox, plus an allowlist
  of string methods), and a missing variable is an error (``StrictUndefined``);
* bounded work: every loop iteration, call and string-building operation is
  charged to a per-render budget (iterations, wall time, characters built), and
  every operation whose output can outgrow its inputs (``indent``, ``tojson``,
  ``*``, printing a list that repeats one large string...) is sized from its
  arguments before it runs, so no single step builds more than the output cap.
  That keeps one hostile template from starving the process that renders it.

Templates are also checked when saved: constructs the sandbox would refuse at
every render (``name.__class__``) and nesting deep enough to exhaust Python's
recursion are refused up front, naming the line.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, Sequence, Sized, ValuesView
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, Final, Literal

from jinja2 import Environment, StrictUndefined, TemplateSyntaxError, meta, nodes, pass_environment
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.filters import make_attrgetter
from jinja2.parser import Parser
from jinja2.runtime import BlockReference, Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

__all__ = [
    "ChatMessage",
    "CompiledPrompt",
    "PromptKind",
    "RenderError",
    "RenderLimits",
    "TemplateProblem",
    "TemplateProblemError",
    "VariableProblem",
    "VariablesInvalidError",
    "compile_prompt",
    "compile_validator",
    "infer_input_schema",
    "input_schema_problems",
    "repeatable_output",
    "repeatable_template",
    "template_variables",
    "unsafe_constructs",
    "variable_problems",
]

PromptKind = Literal["text", "chat"]
CHAT_ROLES: Final = frozenset({"system", "user", "assistant", "tool", "developer"})

# String methods a template may call. Everything else on ``str`` (``format``,
# ``ljust``/``rjust`` without a checked width, ``encode``...) is refused.
_SAFE_STR_METHODS: Final = frozenset(
    {
        "capitalize",
        "casefold",
        "count",
        "endswith",
        "find",
        "index",
        "isalnum",
        "isalpha",
        "isascii",
        "isdecimal",
        "isdigit",
        "islower",
        "isnumeric",
        "isspace",
        "istitle",
        "isupper",
        "lower",
        "lstrip",
        "partition",
        "removeprefix",
        "removesuffix",
        "rfind",
        "rindex",
        "rpartition",
        "rsplit",
        "rstrip",
        "split",
        "splitlines",
        "startswith",
        "strip",
        "swapcase",
        "title",
        "upper",
        # amplifying methods, allowed because _check_str_method sizes them first
        "center",
        "expandtabs",
        "join",
        "ljust",
        "replace",
        "rjust",
        "zfill",
    }
)
_PRINTF_WIDTH: Final = re.compile(r"%[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_REMOVED_GLOBALS: Final = ("lipsum",)


class TemplateProblemError(ValueError):
    """A template that cannot be compiled: syntax errors or unsupported tags."""

    def __init__(self, problems: Sequence[TemplateProblem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(p.describe() for p in self.problems))


class RenderError(Exception):
    """Rendering failed: unsafe access, a runtime error in the template or a limit."""

    def __init__(self, message: str, *, reason: str = "template_error") -> None:
        self.reason = reason
        super().__init__(message)


class VariablesInvalidError(ValueError):
    """The variables do not satisfy the prompt's input schema."""

    def __init__(self, problems: Sequence[VariableProblem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in self.problems))

    @property
    def detail(self) -> str:
        """One sentence naming every variable at fault: the service's problem detail, and the client's local one."""
        named = "; ".join(
            f"variable '{p.field}' {p.message}" if p.field != "variables" else p.message for p in self.problems
        )
        return f"the variables do not fit the prompt's input schema: {named}"


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    """One problem in one template; ``location`` names the message for chat prompts."""

    message: str
    line: int | None = None
    location: str = "template"

    def describe(self) -> str:
        where = f"{self.location}, line {self.line}" if self.line else self.location
        return f"{where}: {self.message}"


@dataclass(frozen=True, slots=True)
class VariableProblem:
    field: str
    message: str


@dataclass(frozen=True, slots=True)
class RenderLimits:
    """Bounds on one render. The defaults suit prompts; the service makes them configurable.

    ``max_built_chars`` bounds all the text one render builds, printed or not, so a
    template that builds many large values it never prints stops too (default: 100 times
    ``max_output_chars``).
    """

    max_output_chars: int = 200_000
    timeout_seconds: float = 0.25
    max_iterations: int = 100_000
    max_built_chars: int | None = None


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


# --------------------------------------------------------------------------- budget


class _Budget:
    """Work left for the render in progress; charged by every guarded operation."""

    __slots__ = ("built_left", "deadline", "iterations_left", "limits")

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.iterations_left = limits.max_iterations
        self.built_left = (
            limits.max_built_chars if limits.max_built_chars is not None else 100 * limits.max_output_chars
        )
        self.deadline = time.perf_counter() + limits.timeout_seconds

    def charge(self, units: int = 1) -> None:
        self.iterations_left -= units
        if self.iterations_left < 0:
            raise RenderError(
                f"template did more than {self.limits.max_iterations} loop iterations or calls",
                reason="render_limit",
            )
        if time.perf_counter() > self.deadline:
            raise RenderError(
                f"template took longer than {self.limits.timeout_seconds:g}s to render",
                reason="render_timeout",
            )

    def check_size(self, size: int) -> None:
        if size > self.limits.max_output_chars:
            raise RenderError(
                f"template built a value of {size} characters, over the limit of {self.limits.max_output_chars}",
                reason="output_too_large",
            )

    def reserve(self, size: int) -> None:
        """An operation is about to build ``size`` characters (or list items): refuse it before it runs."""
        self.check_size(size)
        self.built_left -= size
        if self.built_left < 0:
            raise RenderError("template built too much text in all (printed or not)", reason="render_limit")


_active_budget: ContextVar[_Budget | None] = ContextVar("prompt_render_budget", default=None)


def _budget() -> _Budget:
    budget = _active_budget.get()
    if budget is None:  # a compiled template called outside CompiledPrompt.render
        raise RenderError("templates render only through CompiledPrompt.render")
    return budget


# --------------------------------------------------------------------------- sizing
#
# Everything below estimates, from an operation's arguments, how much it will build,
# so the operation is refused before it runs. Estimates are upper bounds within a small
# constant factor; the exact size of what was built is checked again afterwards.

_END: Final = object()
_MAX_INT_BITS: Final = 4096
_COMMON_ESCAPES: Final = str.maketrans("", "", "\n\r\t")
_Quoting = Literal["str", "repr", "json"]


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _length(value: Any) -> int:
    return len(value) if isinstance(value, Sized) else 0


def _string_size(text: str, quoting: _Quoting | None) -> int:
    """Characters ``text`` takes printed bare, as ``repr`` (inside a printed list) or as JSON."""
    if quoting is None:
        return len(text)
    size = len(text) + 2 + text.count("\\") + text.count("'" if quoting == "repr" else '"')
    if quoting == "json":  # tojson escapes <, >, & and ' as \u00XX, and non-ASCII as \uXXXX
        size += 5 * (text.count("<") + text.count(">") + text.count("&") + text.count("'"))
        if not text.isascii():
            non_ascii = len(text) - len(text.encode("ascii", "ignore"))
            astral = len(text.encode("utf-16-le", "surrogatepass")) // 2 - len(text)
            size += 5 * non_ascii + 6 * astral
    if not text.isprintable():
        size += text.count("\n") + text.count("\r") + text.count("\t")
        if not text.translate(_COMMON_ESCAPES).isprintable():
            size += 9 * len(text)  # other control characters print as \x.., \u.... or \U........
    return size


def _printed_size(value: Any, *, quoting: _Quoting = "str", indent: int = 0) -> int:
    """About how many characters ``str(value)`` (or pprint, or JSON) writes, without writing them.

    A list can repeat one large string many times at the cost of one reference each, so
    its text can be far larger than its memory. The walk stops as soon as it passes the
    output limit, which bounds its own work too. ``indent`` adds that many characters per
    nesting level to every item (pprint, tojson with an indent).
    """
    limit = _budget().limits.max_output_chars
    total = 0
    stack: list[tuple[Iterator[Any], int]] = [(iter((value,)), 0)]
    while stack:
        items, depth = stack[-1]
        item = next(items, _END)
        if item is _END:
            stack.pop()
            continue
        if depth:
            total += 2 + indent * depth  # separator, line break and indentation
        if isinstance(item, str):
            total += _string_size(item, quoting if depth or quoting != "str" else None)
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        elif isinstance(item, float):
            total += 24
        elif isinstance(item, Mapping | ItemsView):
            total += 2
            pairs = item.items() if isinstance(item, Mapping) else item
            stack.append((itertools.chain.from_iterable(pairs), depth + 1))
        elif isinstance(item, list | tuple | set | frozenset | KeysView | ValuesView):
            total += 2 + (0 if type(item) in (list, tuple) else len(type(item).__name__) + 2)
            stack.append((iter(item), depth + 1))
        elif isinstance(item, Namespace):
            total += 12  # "<Namespace {...}>" around its attributes
            stack.append((iter((item._Namespace__attrs,)), depth))
        else:  # macros, loops, ranges, iterators: short fixed texts
            total += len(repr(item))
        if total > limit:
            break
    return total


def _text_size(value: Any) -> int:
    """Characters of ``str(value)``."""
    return len(value) if isinstance(value, str) else _printed_size(value)


def _escaped_size(value: Any) -> int:
    """Characters of ``escape(value)``: each of ``&<>"'`` becomes an entity of up to five characters."""
    if isinstance(value, str):
        return len(value) + 4 * sum(value.count(c) for c in "&<>\"'")
    return 5 * _printed_size(value)


def _replaced_size(text: Any, old: Any, new: Any, count: Any = None) -> int:
    """Characters of ``str(text).replace(str(old), str(new), count)``."""
    size = _text_size(text)
    old_size, new_size = _text_size(old), _text_size(new)
    if new_size <= old_size:
        return size
    if not old_size:
        occurrences = size + 1
    elif isinstance(text, str) and isinstance(old, str):
        occurrences = text.count(old)
    else:
        occurrences = size // old_size
    if _int(count) > 0 or count == 0:
        occurrences = min(occurrences, _int(count))
    return size + occurrences * (new_size - old_size)


def _printf_size(template: Any, args: Any) -> int:
    """Characters of ``template % args``: each conversion may print the largest argument, padded to its width."""
    if not isinstance(template, str):
        return 0
    values = list(args.values()) if isinstance(args, Mapping) else list(args) if isinstance(args, tuple) else [args]
    largest = 0
    for value in values:
        largest = max(largest, _printed_size(value, quoting="repr"))
    size = len(template)
    for width, precision in _PRINTF_WIDTH.findall(template):
        if "*" in (width, precision):
            raise SecurityError("'*' widths are not allowed in format strings")
        size += int(width or 0) + int(precision or 0) + largest
    return size


def _no_growth(*args: Any, **kwargs: Any) -> int:
    """Returns one of its inputs, a number, a bool or a lazy iterator: nothing to size."""
    return 0


def _stringified(value: Any, *args: Any, **kwargs: Any) -> int:
    """Reads ``str(value)``, which for anything but a string is built first."""
    return 0 if isinstance(value, str) else _printed_size(value)


def _same_text(value: Any, *args: Any, **kwargs: Any) -> int:
    """Builds a new text as long as ``str(value)`` (case changes, trimming, marking safe)."""
    return _text_size(value)


def _items_sorted(value: Any, *args: Any, **kwargs: Any) -> int:
    """Sorts or groups a copy of its input: work and size grow with its length."""
    size = _length(value)
    _budget().charge(size)
    return size


def _items_listed(value: Any, *args: Any, **kwargs: Any) -> int:
    return _length(value)


def _size_batch(value: Any, linecount: Any, fill_with: Any = None) -> int:
    return _length(value) + (max(_int(linecount), 0) if fill_with is not None else 0)


def _size_slice(value: Any, slices: Any, fill_with: Any = None) -> int:
    count = max(_int(slices), 0)
    budget = _budget()
    budget.check_size(_length(value) + count)
    budget.charge(count)  # a Python loop builds one list per slice, filled or not
    return _length(value) + count


def _size_center(value: Any, width: Any = 80) -> int:
    return max(_text_size(value), _int(width))


def _size_indent(s: Any, width: Any = 4, first: Any = False, blank: Any = False) -> int:
    size = _text_size(s)
    lines = s.count("\n") + 1 if isinstance(s, str) else size + 1
    pad = len(width) if isinstance(width, str) else max(_int(width), 0)
    return size + (lines + 1) * pad


def _size_join(value: Any, d: Any = "", attribute: Any = None) -> int:
    limit = _budget().limits.max_output_chars
    items = value if isinstance(value, list) else []
    size = _text_size(d) * max(len(items) - 1, 0)
    for item in items:
        size += _text_size(item)
        if size > limit:
            break
    return size


def _size_format(value: Any, *args: Any, **kwargs: Any) -> int:
    return _printf_size(value, kwargs or args)


def _size_pprint(value: Any) -> int:
    return _printed_size(value, quoting="repr", indent=1)


def _size_round(value: Any, precision: Any = 0, method: Any = "common") -> int:
    return abs(_int(precision))  # floor and ceil compute 10 ** precision


def _size_tojson(value: Any, indent: Any = None) -> int:
    width = len(indent) if isinstance(indent, str) else max(_int(indent), 0)
    return _printed_size(value, quoting="json", indent=width)


def _size_truncate(s: Any, length: Any = 255, killwords: Any = False, end: Any = "...", leeway: Any = None) -> int:
    return _text_size(s) + _text_size(end)


def _size_urlencode(value: Any) -> int:
    if isinstance(value, str):
        return 3 * len(value.encode("utf-8", "surrogatepass"))
    return 12 * _printed_size(value)  # a character is up to four UTF-8 bytes, each written %XX


def _size_urlize(
    value: Any,
    trim_url_limit: Any = None,
    nofollow: Any = False,
    target: Any = None,
    rel: Any = None,
    extra_schemes: Any = None,
) -> int:
    if isinstance(value, str):  # only words with a dot, an @ or a scheme's colon can become links
        links = sum(1 for word in value.split() if "." in word or "@" in word or ":" in word)
    else:
        links = _text_size(value) // 4 + 1
    per_link = 60 + sum(_text_size(a) for a in (target, rel) if a is not None)
    return 2 * _escaped_size(value) + links * per_link


def _size_wordwrap(
    s: Any,
    width: Any = 79,
    break_long_words: Any = True,
    wrapstring: Any = None,
    break_on_hyphens: Any = True,
) -> int:
    size = _text_size(s)
    breaks = s.count("\n") if isinstance(s, str) else 0
    lines = min(size, 2 * size // max(_int(width), 1) + breaks) + 1
    _budget().charge(lines)  # textwrap works line by line in Python
    return size + lines * (_text_size(wrapstring) if wrapstring is not None else 1)


def _size_xmlattr(d: Any, autospace: Any = True) -> int:
    if not isinstance(d, Mapping):
        return 0
    return sum(_text_size(key) + _escaped_size(value) + 4 for key, value in d.items())


def _size_modulo(value: Any, num: Any = 2) -> int:
    """``odd``, ``even`` and ``divisibleby`` compute ``value % num``: on a string, that formats."""
    return _printf_size(value, num)


@pass_environment
def _linear_sum(environment: Environment, iterable: Iterable[Any], attribute: Any = None, start: Any = 0) -> Any:
    """Jinja's ``sum``, linear for lists: the built-in copies the growing list at every step."""
    if attribute is not None:
        iterable = map(make_attrgetter(environment, attribute), iterable)
    items = list(iterable)
    budget = _budget()
    budget.charge(len(items))
    if isinstance(start, list | tuple) and set(map(type, items)) <= {type(start)}:
        budget.reserve(len(start) + sum(map(len, items)))
        return type(start)(itertools.chain(start, *items))
    return sum(items, start)


Estimate = Callable[..., int]

# How much each built-in filter may build, from its own arguments (without the context
# Jinja passes first). Every filter of the sandbox needs an entry: one without is removed.
FILTER_SIZES: Final[Mapping[str, Estimate]] = {
    "abs": _no_growth,
    "attr": _no_growth,
    "batch": _size_batch,
    "capitalize": _same_text,
    "center": _size_center,
    "count": _no_growth,
    "d": _no_growth,
    "default": _no_growth,
    "dictsort": _items_sorted,
    "e": _escaped_size,
    "escape": _escaped_size,
    "filesizeformat": _no_growth,
    "first": _no_growth,
    "float": _no_growth,
    "forceescape": _escaped_size,
    "format": _size_format,
    "groupby": _items_sorted,
    "indent": _size_indent,
    "int": _no_growth,
    "items": _no_growth,
    "join": _size_join,
    "last": _no_growth,
    "length": _no_growth,
    "list": _items_listed,
    "lower": _same_text,
    "map": _no_growth,
    "max": _no_growth,
    "min": _no_growth,
    "pprint": _size_pprint,
    "random": _no_growth,
    "reject": _no_growth,
    "rejectattr": _no_growth,
    "replace": _replaced_size,
    "reverse": _same_text,
    "round": _size_round,
    "safe": _same_text,
    "select": _no_growth,
    "selectattr": _no_growth,
    "slice": _size_slice,
    "sort": _items_sorted,
    "string": _stringified,
    "striptags": _same_text,
    "sum": _no_growth,  # replaced by _linear_sum, which sizes what it concatenates
    "title": _same_text,
    "tojson": _size_tojson,
    "trim": _same_text,
    "truncate": _size_truncate,
    "unique": _no_growth,
    "upper": _same_text,
    "urlencode": _size_urlencode,
    "urlize": _size_urlize,
    "wordcount": _stringified,
    "wordwrap": _size_wordwrap,
    "xmlattr": _size_xmlattr,
}

# The same for the built-in tests (``is odd``...); most return a bool from what they are given.
_BOOLEAN_TESTS: Final = (
    "!=", "<", "<=", "==", ">", ">=", "boolean", "callable", "defined", "eq", "equalto", "escaped", "false",
    "filter", "float", "ge", "greaterthan", "gt", "in", "integer", "iterable", "le", "lessthan", "lt", "mapping",
    "ne", "none", "number", "sameas", "sequence", "string", "test", "true", "undefined",
)  # fmt: skip
TEST_SIZES: Final[Mapping[str, Estimate]] = {
    **dict.fromkeys(_BOOLEAN_TESTS, _no_growth),
    "divisibleby": _size_modulo,
    "even": _size_modulo,
    "odd": _size_modulo,
    "lower": _stringified,
    "upper": _stringified,
}
_MATERIALIZED: Final = frozenset({"join"})  # estimated from their items, so a lazy input is listed first


def _guarded(name: str, func: Callable[..., Any], estimate: Estimate) -> Callable[..., Any]:
    """Wrap a built-in filter or test: charge the budget and size what it will build before it runs."""
    skip = 1 if hasattr(func, "jinja_pass_arg") else 0  # the context, eval context or environment Jinja passes
    materialize = name in _MATERIALIZED

    @wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.charge()
        if materialize and len(args) > skip and not isinstance(args[skip], list):
            items = list(args[skip])
            budget.charge(len(items))
            args = (*args[:skip], items, *args[skip + 1 :])
        budget.reserve(estimate(*args[skip:], **kwargs))
        result = func(*args, **kwargs)
        if isinstance(result, str | list):
            budget.check_size(len(result))
        return result

    return guarded


def _guarded_all(functions: Mapping[str, Any], sizes: Mapping[str, Estimate]) -> dict[str, Any]:
    """Every function guarded by its estimate; one without an estimate (new in a Jinja release) is left out."""
    return {name: _guarded(name, func, sizes[name]) for name, func in functions.items() if name in sizes}


class _SizedBuffer(list[str]):
    """The text a macro, call, filter or set block collects, sized as it grows.

    Jinja joins these only when the block ends, so a loop inside one could otherwise
    collect far more than the output limit before anything is checked.
    """

    __slots__ = ("_budget", "_size")

    def __init__(self, budget: _Budget) -> None:
        super().__init__()
        self._budget = budget
        self._size = 0

    def _grow(self, size: int) -> None:
        self._size += size
        self._budget.reserve(size)
        self._budget.check_size(self._size)

    def append(self, chunk: str) -> None:
        self._grow(len(chunk))
        super().append(chunk)

    def extend(self, chunks: Iterable[str]) -> None:
        pieces = tuple(chunks)
        self._grow(sum(len(piece) for piece in pieces))
        super().extend(pieces)


def _sized_output(value: Any) -> Any:
    """Size a value before ``{{ }}`` turns it into text: a list may repeat one large string many times."""
    if not isinstance(value, str | int | float | bool):
        budget = _active_budget.get()
        if budget is not None:  # None while Jinja folds constants when compiling: those come from the source
            budget.reserve(_printed_size(value))
    return value


def _check_str_method(name: str, text: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Size an allowed ``str`` method's result before it runs; returns the arguments to call it with."""
    budget = _budget()
    if name in {"center", "ljust", "rjust", "zfill"} and args:
        budget.reserve(max(len(text), _int(args[0])))
    elif name == "expandtabs":
        tab_size = _int(args[0]) if args else 8
        budget.reserve(len(text) + text.count("\t") * max(tab_size, 0))
    elif name == "replace" and len(args) >= 2:
        budget.reserve(_replaced_size(text, args[0], args[1], args[2] if len(args) > 2 else -1))
    elif name == "join" and args:
        items = list(args[0])  # listed once, so a lazy iterable is not consumed by the check
        budget.charge(len(items))
        budget.reserve(_size_join(items, text))
        return (items, *args[1:])
    return args


# --------------------------------------------------------------------------- sandbox


class _GuardedCodeGenerator(CodeGenerator):
    """Routes loops, ``~`` concatenation and block output through the environment's guards."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:  # noqa: N802 - Jinja2's visitor name
        node.iter = nodes.Call(nodes.EnvironmentAttribute("guard_iteration"), [node.iter], [], None, None)
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:  # noqa: N802 - Jinja2's visitor name
        self.write("environment.guard_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.output_buffer()")


class PromptSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with strict undefined and bounded work."""

    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%", "//"})

    def __init__(self) -> None:
        super().__init__(
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            auto_reload=False,
            cache_size=0,
            finalize=_sized_output,
        )
        for name in _REMOVED_GLOBALS:
            self.globals.pop(name, None)
        self.filters["sum"] = _linear_sum
        self.filters = _guarded_all(self.filters, FILTER_SIZES)
        self.tests = _guarded_all(self.tests, TEST_SIZES)

    # -- hooks called by generated code

    def guard_iteration(self, iterable: Iterable[Any]) -> Iterator[Any]:
        budget = _budget()
        for item in iterable:
            budget.charge()
            yield item

    def guard_concat(self, parts: Sequence[Any]) -> str:
        budget = _budget()
        budget.charge()
        budget.reserve(sum(_text_size(p) for p in parts))
        return "".join(p if isinstance(p, str) else str(p) for p in parts)

    def output_buffer(self) -> _SizedBuffer:
        return _SizedBuffer(_budget())

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.charge()
        if operator == "**":
            if isinstance(left, int | float) and isinstance(right, int | float):
                magnitude = abs(float(right)) * math.log2(abs(float(left)) + 2)
                if magnitude > _MAX_INT_BITS:
                    raise RenderError("exponent too large", reason="render_limit")
        elif operator == "*":
            bits = left.bit_length() + right.bit_length() if isinstance(left, int) and isinstance(right, int) else 0
            if bits > _MAX_INT_BITS:
                raise RenderError("product too large", reason="render_limit")
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    budget.reserve(len(seq) * max(times, 0))
        elif operator == "+" and isinstance(left, str | list | tuple):
            budget.reserve(len(left) + _length(right))
        elif operator == "%" and isinstance(left, str):
            budget.reserve(_printf_size(left, right))
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """Refuse ``str.format``/``format_map``: their width specifiers build unbounded strings."""
        if getattr(value, "__name__", None) in ("format", "format_map") and isinstance(
            getattr(value, "__self__", None), str
        ):

            def refused(*args: Any, **kwargs: Any) -> str:
                raise SecurityError("str.format is not available in prompt templates; use the format filter")

            return refused
        return None

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and callable(value):
            return attr in _SAFE_STR_METHODS
        return super().is_safe_attribute(obj, attr, value)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget = _budget()
        budget.charge()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            args = _check_str_method(getattr(__obj, "__name__", ""), owner, args)
        elif isinstance(__obj, BlockReference) and not args and not kwargs:
            return _render_block(__obj, budget)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, str):
            budget.check_size(len(result))
        return result


def _render_block(block: BlockReference, budget: _Budget) -> str:
    """``self.name()``: a block's text, collected in a sized buffer (Jinja joins it unsized)."""
    collected = _SizedBuffer(budget)
    for chunk in block._stack[block._depth](block._context):  # what BlockReference.__call__ joins unsized
        collected.append(chunk)
    return "".join(collected)


_SANDBOX = PromptSandbox()


# --------------------------------------------------------------------------- analysis

# Jinja parses and compiles templates recursively: brackets cost about 14 Python frames
# a level, blocks about 4, and the compiler a few per tree level. These bounds keep a
# template far from Python's recursion limit wherever it is compiled (service, CLI, apps).
MAX_BRACKET_DEPTH: Final = 20
MAX_BLOCK_DEPTH: Final = 40
MAX_LOOP_DEPTH: Final = 16  # each loop is a Python block, and Python allows 20 nested blocks
MAX_TREE_DEPTH: Final = 80
_OPENING_TAGS: Final = frozenset({"if", "for", "macro", "call", "filter", "with", "autoescape", "block", "set"})
_OPENING_BRACKETS: Final = frozenset({"lparen", "lbracket", "lbrace"})
_CLOSING_BRACKETS: Final = frozenset({"rparen", "rbracket", "rbrace"})


def _too_deep(message: str, line: int | None, location: str) -> TemplateProblemError:
    return TemplateProblemError([TemplateProblem(f"the template nests too deeply: {message}", line, location)])


def _check_nesting(source: str, location: str) -> None:
    """Refuse brackets and blocks nested past the bounds, from the tokens, before the recursive parser runs."""
    brackets = 0
    open_tags: list[str] = []
    tag: str | None = None  # the name of the block tag being read
    assigns = False
    try:
        for token in _SANDBOX.lexer.tokenize(source):
            if token.type in _OPENING_BRACKETS:
                brackets += 1
                if brackets > MAX_BRACKET_DEPTH:
                    raise _too_deep(f"brackets nest more than {MAX_BRACKET_DEPTH} levels", token.lineno, location)
            elif token.type in _CLOSING_BRACKETS:
                brackets -= 1
            elif token.type == "block_begin":
                tag, assigns = "", False
            elif tag == "" and token.type == "name":
                tag = token.value
            elif tag is not None and token.type == "assign":
                assigns = True
            elif token.type == "block_end" and tag is not None:
                if tag in _OPENING_TAGS and not (tag == "set" and assigns):
                    open_tags.append(tag)
                    if len(open_tags) > MAX_BLOCK_DEPTH:
                        raise _too_deep(f"blocks nest more than {MAX_BLOCK_DEPTH} levels", token.lineno, location)
                    if tag == "for" and open_tags.count("for") > MAX_LOOP_DEPTH:
                        raise _too_deep(f"loops nest more than {MAX_LOOP_DEPTH} levels", token.lineno, location)
                elif tag.startswith("end") and open_tags:
                    open_tags.pop()
                tag = None
    except TemplateSyntaxError:
        return  # the parser reports it, with its line


def _check_tree_depth(ast: nodes.Template, location: str) -> None:
    """Refuse expressions nested past the bound (5,000 chained filters parse in a loop but compile recursively)."""
    stack: list[tuple[nodes.Node, int]] = [(ast, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_TREE_DEPTH:
            line = getattr(node, "lineno", None)
            raise _too_deep(f"expressions and blocks nest more than {MAX_TREE_DEPTH} levels", line, location)
        stack.extend((child, depth + 1) for child in node.iter_child_nodes())


def _parse(source: str, location: str, *, bounded: bool = False) -> nodes.Template:
    """Parse one template; ``bounded`` (when saving) also enforces the nesting bounds above.

    Stored versions parse without the bounds, so a version saved before they existed keeps
    loading; Python's own recursion limit is still reported as a template problem.
    """
    if bounded:
        _check_nesting(source, location)
    parser = Parser(_SANDBOX, source)
    try:
        ast = parser.parse()
        if bounded:
            _check_tree_depth(ast, location)
        composing = next(iter(ast.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends))), None)
    except TemplateSyntaxError as exc:
        raise TemplateProblemError([TemplateProblem(exc.message or str(exc), exc.lineno, location)]) from exc
    except RecursionError as exc:  # unary chains (not not not ...) recurse in the parser
        raise _too_deep("operators nest too deeply to parse", parser.stream.current.lineno, location) from exc
    if composing is not None:
        tag = type(composing).__name__.lower()
        raise TemplateProblemError(
            [TemplateProblem(f"'{tag}' is not supported in prompt templates", composing.lineno, location)]
        )
    return ast


# Methods the sandbox refuses to call: those that change a list, dict or set, str.format,
# and the str methods outside the allowlist.
_REFUSED_METHODS: Final = frozenset(
    {
        "add", "append", "clear", "difference_update", "discard", "extend", "insert", "intersection_update",
        "pop", "popitem", "remove", "reverse", "setdefault", "sort", "symmetric_difference_update", "update",
        "format", "format_map",
        *(name for name in dir(str) if not name.startswith("_") and name not in _SAFE_STR_METHODS),
    }
)  # fmt: skip
_UNSAFE_ATTRIBUTES: Final = frozenset({"gi_frame", "gi_code", "cr_frame", "cr_code", "ag_code", "ag_frame"})
# Filters that read an attribute named by an argument: the position of that argument after
# the filtered value (None: only the ``attribute=`` keyword).
_ATTRIBUTE_ARGUMENTS: Final[Mapping[str, int | None]] = {
    "attr": 0,
    "selectattr": 0,
    "rejectattr": 0,
    "groupby": 0,
    "sum": 0,
    "join": 1,
    "unique": 1,
    "min": 1,
    "max": 1,
    "sort": 2,
    "map": None,
}


def _unsafe_name(name: Any) -> bool:
    return isinstance(name, str) and any(part.startswith("_") or part in _UNSAFE_ATTRIBUTES for part in name.split("."))


def _described(node: nodes.Node) -> str:
    """A short text for the object an attribute is read from: ``name``, ``name.attr``, a constant or ``(...)``."""
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Const) and isinstance(node.value, str) and len(node.value) <= 20:
        return f'"{node.value}"'
    if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name):
        return f"{node.node.name}.{node.attr}"
    return "(...)"


def _unsafe_read(node: nodes.Node) -> str | None:
    """The construct when ``node`` reads an internal attribute by a constant name (``x.__class__``, ``x['_y']``)."""
    if isinstance(node, nodes.Getattr) and _unsafe_name(node.attr):
        return f"{_described(node.node)}.{node.attr}"
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and _unsafe_name(node.arg.value):
        return f"{_described(node.node)}[{node.arg.value!r}]"
    return None


def _inside_unsafe_read(node: nodes.Getattr | nodes.Getitem) -> bool:
    """Whether a read further in the same chain is already unsafe (report a chain once, at its first read)."""
    inner: Any = node.node
    while isinstance(inner, nodes.Getattr | nodes.Getitem | nodes.Call | nodes.Filter):
        if _unsafe_read(inner) is not None:
            return True
        inner = inner.node
    return False


def _unsafe_in(ast: nodes.Template, location: str) -> list[TemplateProblem]:
    problems: list[TemplateProblem] = []

    def refuse(node: nodes.Node, message: str) -> None:
        problems.append(TemplateProblem(f"{message}, which the sandbox refuses", node.lineno, location))

    for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Call, nodes.Mod)):
        if isinstance(node, nodes.Getattr | nodes.Getitem):
            construct = _unsafe_read(node)
            if construct is not None and not _inside_unsafe_read(node):
                refuse(node, f"'{construct}' reads an internal attribute")
        elif isinstance(node, nodes.Filter) and node.name in _ATTRIBUTE_ARGUMENTS:
            position = _ATTRIBUTE_ARGUMENTS[node.name]
            named = [k.value for k in node.kwargs if k.key == "attribute"]
            if position is not None and len(node.args) > position:
                named.append(node.args[position])
            for argument in named:
                if isinstance(argument, nodes.Const) and _unsafe_name(argument.value):
                    refuse(node, f"'|{node.name}({argument.value!r})' reads an internal attribute")
        elif isinstance(node, nodes.Filter) and node.name == "format" and _star_width(node.node):
            refuse(node, "'|format' with a '*' width")
        elif isinstance(node, nodes.Mod) and _star_width(node.left):
            refuse(node, "'%' formatting with a '*' width")
        elif (
            isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr) and node.node.attr in _REFUSED_METHODS
        ):
            refuse(node, f"'{_described(node.node.node)}.{node.node.attr}()' calls a method")
    return problems


def _star_width(node: nodes.Node | None) -> bool:
    if not (isinstance(node, nodes.Const) and isinstance(node.value, str)):
        return False
    return any("*" in spec for spec in _PRINTF_WIDTH.findall(node.value))


def unsafe_constructs(source: str, *, location: str = "template") -> list[TemplateProblem]:
    """Constructs the sandbox would refuse at every render, found when the template is saved.

    Attribute reads of names starting with ``_`` (``name.__class__``, ``name['__class__']``,
    ``|attr('__class__')``, ``|map(attribute='_x')``), calls of methods that change values or
    format strings (``.append()``, ``.format()``), and ``'*'`` printf widths. A pure walk
    of the template's syntax tree: nothing runs.
    """
    return _unsafe_in(_parse(source, location, bounded=True), location)


def template_variables(source: str, *, location: str = "template") -> dict[str, bool]:
    """Variables a template reads from its caller, mapped to "used only as text".

    A variable that is iterated, indexed, filtered or has attributes read may be
    any JSON value; one that is only printed is inferred to be a string.
    """
    ast = _parse(source, location)
    names = meta.find_undeclared_variables(ast) - set(_SANDBOX.globals)
    structured: set[str] = set()
    for node in ast.find_all(
        (
            nodes.For,
            nodes.Getattr,
            nodes.Getitem,
            nodes.Filter,
            nodes.Test,
            nodes.Call,
            nodes.If,
            nodes.CondExpr,
            nodes.Compare,
        )
    ):
        targets: list[nodes.Node | None] = []
        if isinstance(node, nodes.For):
            targets = [node.iter]
        elif isinstance(node, nodes.Getattr | nodes.Getitem | nodes.Filter | nodes.Test):
            targets = [node.node]
        elif isinstance(node, nodes.Call):
            targets = [node.node, *node.args]
        elif isinstance(node, nodes.If | nodes.CondExpr):
            targets = [node.test]
        elif isinstance(node, nodes.Compare):
            targets = [node.expr, *(op.expr for op in node.ops)]
        for target in targets:
            if isinstance(target, nodes.Name) and target.name in names:
                structured.add(target.name)
    return {name: name not in structured for name in sorted(names)}


# What a variable that is only printed may be: what ``{{ }}`` turns into text as a reader expects.
PRINTABLE_TYPES: Final = ("string", "number", "boolean")


def infer_input_schema(sources: Mapping[str, str]) -> dict[str, Any]:
    """The input schema used when a version declares none: every variable required.

    Variables used only as text must be what prints as text (a string, a number or a boolean);
    the others may be any JSON value.
    """
    textual: dict[str, bool] = {}
    for location, source in sources.items():
        for name, only_text in template_variables(source, location=location).items():
            textual[name] = textual.get(name, True) and only_text
    properties = {name: ({"type": list(PRINTABLE_TYPES)} if only_text else {}) for name, only_text in textual.items()}
    return {
        "type": "object",
        "properties": properties,
        "required": sorted(properties),
        "additionalProperties": False,
    }


# --------------------------------------------------------------------------- input schema

_SCHEMA_TYPES: Final = frozenset({"string", "number", "integer", "boolean", "array", "object", "null"})
_SCHEMA_KEYWORDS: Final = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "enum",
        "const",
        "maxLength",
        "minLength",
        "minimum",
        "maximum",
        "items",
        "minItems",
        "maxItems",
        "title",
        "description",
        "default",
        "examples",
        "$schema",
    }
)


def input_schema_problems(schema: Any, path: str = "input_schema") -> list[str]:
    """Why ``schema`` is outside the supported JSON Schema subset (empty when it is fine)."""
    if not isinstance(schema, dict):
        return [f"{path}: must be an object"]
    problems = [f"{path}: unsupported keyword '{key}'" for key in schema if key not in _SCHEMA_KEYWORDS]
    if path == "input_schema" and schema.get("type", "object") != "object":
        return [*problems, f"{path}.type: the top level must be an object"]
    declared = schema.get("type")
    types = declared if isinstance(declared, list) else [declared] if declared is not None else []
    problems += [f"{path}.type: unknown type {t!r}" for t in types if t not in _SCHEMA_TYPES]
    for key in ("maxLength", "minLength", "minItems", "maxItems"):
        if key in schema and not (
            isinstance(schema[key], int) and not isinstance(schema[key], bool) and schema[key] >= 0
        ):
            problems.append(f"{path}.{key}: must be a non-negative integer")
    for key in ("minimum", "maximum"):
        if key in schema and not (isinstance(schema[key], int | float) and not isinstance(schema[key], bool)):
            problems.append(f"{path}.{key}: must be a number")
    if "enum" in schema and not (isinstance(schema["enum"], list) and schema["enum"]):
        problems.append(f"{path}.enum: must be a non-empty array")
    if "required" in schema and not (
        isinstance(schema["required"], list) and all(isinstance(r, str) for r in schema["required"])
    ):
        problems.append(f"{path}.required: must be an array of names")
    if "additionalProperties" in schema and not isinstance(schema["additionalProperties"], bool):
        problems.append(f"{path}.additionalProperties: must be true or false")
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        problems.append(f"{path}.properties: must be an object")
    else:
        for name, sub in properties.items():
            problems += input_schema_problems(sub, f"{path}.properties.{name}")
    if "items" in schema:
        problems += input_schema_problems(schema["items"], f"{path}.items")
    return problems


def _type_matches(value: Any, expected: str) -> bool:
    if expected == "string":
        return isinstance(value, str)
    if expected == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if expected == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected == "boolean":
        return isinstance(value, bool)
    if expected == "array":
        return isinstance(value, list)
    if expected == "object":
        return isinstance(value, dict)
    return value is None


def variable_problems(schema: Mapping[str, Any], value: Any, path: str = "") -> list[VariableProblem]:
    """Every way ``value`` breaks ``schema`` (a supported subset of JSON Schema)."""
    where = path or "variables"
    problems: list[VariableProblem] = []
    declared = schema.get("type")
    if declared is not None:
        types = declared if isinstance(declared, list) else [declared]
        if not any(_type_matches(value, t) for t in types):
            return [VariableProblem(where, f"expected {' or '.join(types)}, got {_json_type(value)}")]
    if "const" in schema and value != schema["const"]:
        problems.append(VariableProblem(where, f"must be {schema['const']!r}"))
    if "enum" in schema and value not in schema["enum"]:
        problems.append(VariableProblem(where, f"must be one of {', '.join(map(repr, schema['enum']))}"))
    if isinstance(value, str | list):
        kind = "characters" if isinstance(value, str) else "items"
        longest = schema.get("maxLength" if isinstance(value, str) else "maxItems")
        shortest = schema.get("minLength" if isinstance(value, str) else "minItems")
        if longest is not None and len(value) > longest:
            problems.append(VariableProblem(where, f"must have at most {longest} {kind}, has {len(value)}"))
        if shortest is not None and len(value) < shortest:
            problems.append(VariableProblem(where, f"must have at least {shortest} {kind}, has {len(value)}"))
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(VariableProblem(where, f"must be at least {schema['minimum']}"))
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(VariableProblem(where, f"must be at most {schema['maximum']}"))
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            problems += variable_problems(schema["items"], item, f"{where}[{index}]")
    if isinstance(value, dict):
        properties: Mapping[str, Any] = schema.get("properties", {})
        prefix = f"{path}." if path else ""
        problems += [
            VariableProblem(f"{prefix}{name}", "is required")
            for name in schema.get("required", [])
            if name not in value
        ]
        # Top-level inputs are strict (a typo is an error); nested objects allow extra keys.
        if schema.get("additionalProperties", bool(path)) is False:
            problems += [
                VariableProblem(f"{prefix}{name}", "is not an input of this prompt")
                for name in value
                if name not in properties
            ]
        for name, sub in properties.items():
            if name in value:
                problems += variable_problems(sub, value[name], f"{prefix}{name}")
    return problems


Validator = Callable[[Any], list[VariableProblem]]
_ANNOTATIONS: Final = frozenset({"title", "description", "default", "examples", "$schema"})


def compile_validator(schema: Mapping[str, Any]) -> Validator:
    """``variable_problems`` for one schema, fast on valid values (the common case on every render).

    The schema is turned into nested predicates once; only a value that fails
    them pays for the detailed report of ``variable_problems``.
    """
    is_valid = _compile_check(schema, nested=False)

    def validate(value: Any) -> list[VariableProblem]:
        return [] if is_valid(value) else variable_problems(schema, value)

    return validate


def _compile_check(schema: Mapping[str, Any], *, nested: bool) -> Callable[[Any], bool]:
    """A predicate true exactly when ``variable_problems(schema, value)`` finds nothing."""
    checks: list[Callable[[Any], bool]] = []
    declared = schema.get("type")
    if declared is not None:
        types = declared if isinstance(declared, list) else [declared]
        if types == ["string"]:
            checks.append(lambda v: isinstance(v, str))
        elif types == ["object"]:
            checks.append(lambda v: isinstance(v, dict))
        else:
            checks.append(lambda v: any(_type_matches(v, t) for t in types))
    if "const" in schema:
        constant = schema["const"]
        checks.append(lambda v: v == constant)
    if "enum" in schema:
        options = list(schema["enum"])
        checks.append(lambda v: v in options)
    bounds = {k: schema.get(k) for k in ("maxLength", "minLength", "maxItems", "minItems")}
    if any(b is not None for b in bounds.values()):

        def sized(v: Any) -> bool:
            if isinstance(v, str | list):
                longest, shortest = (
                    (bounds["maxLength"], bounds["minLength"])
                    if isinstance(v, str)
                    else (bounds["maxItems"], bounds["minItems"])
                )
                return (longest is None or len(v) <= longest) and (shortest is None or len(v) >= shortest)
            return True

        checks.append(sized)
    if "minimum" in schema or "maximum" in schema:
        low, high = schema.get("minimum"), schema.get("maximum")

        def bounded(v: Any) -> bool:
            if isinstance(v, int | float) and not isinstance(v, bool):
                return (low is None or v >= low) and (high is None or v <= high)
            return True

        checks.append(bounded)
    if "items" in schema:
        item_ok = _compile_check(schema["items"], nested=True)
        checks.append(lambda v: not isinstance(v, list) or all(item_ok(i) for i in v))
    properties: Mapping[str, Any] = schema.get("properties", {})
    required = tuple(schema.get("required", ()))
    strict = schema.get("additionalProperties", nested) is False
    if properties or required or strict:
        known = frozenset(properties)
        property_checks = {
            name: _compile_check(sub, nested=True)
            for name, sub in properties.items()
            if set(sub) - _ANNOTATIONS  # an empty schema accepts anything
        }

        def object_ok(v: Any) -> bool:
            if not isinstance(v, dict):
                return True
            for name in required:
                if name not in v:
                    return False
            if strict and not known.issuperset(v):
                return False
            for name, check in property_checks.items():  # noqa: SIM110 - loops beat all(genexpr) per render
                if name in v and not check(v[name]):
                    return False
            return True

        checks.append(object_ok)
    if not checks:
        return lambda v: True
    if len(checks) == 1:
        return checks[0]

    def every(v: Any) -> bool:
        for check in checks:  # noqa: SIM110 - loops beat all(genexpr) per render
            if not check(v):
                return False
        return True

    return every


def _json_type(value: Any) -> str:
    for name in ("boolean", "integer", "number", "string", "array", "object", "null"):
        if _type_matches(value, name) and not (name == "integer" and isinstance(value, float)):
            return name
    return type(value).__name__


# --------------------------------------------------------------------------- compile & render


@dataclass(frozen=True)
class CompiledPrompt:
    """A prompt version compiled once and rendered many times."""

    kind: PromptKind
    input_schema: dict[str, Any]
    declared_schema: bool
    _templates: tuple[tuple[str, Any], ...] = field(repr=False)
    _validator: Validator = field(repr=False)
    # Whether a render is a function of the variables alone (see ``repeatable_template``), so that a
    # render of the same variables may be reused; a use of the ``random`` filter makes it False.
    repeatable: bool = False

    @property
    def variables(self) -> list[str]:
        return sorted(self.input_schema.get("properties", {}))

    def validate(self, variables: Mapping[str, Any]) -> None:
        problems = self._validator(variables if isinstance(variables, dict) else dict(variables))
        if problems:
            raise VariablesInvalidError(problems)

    def render(self, variables: Mapping[str, Any], limits: RenderLimits | None = None) -> str | list[ChatMessage]:
        """Validate ``variables`` and render; text for ``text`` prompts, messages for ``chat``."""
        self.validate(variables)
        budget = _Budget(limits or RenderLimits())
        token = _active_budget.set(budget)
        try:
            rendered = [(role, _render_one(template, variables, budget)) for role, template in self._templates]
        finally:
            _active_budget.reset(token)
        if self.kind == "text":
            return rendered[0][1]
        return [ChatMessage(role, content) for role, content in rendered]


def _render_one(template: Any, variables: Mapping[str, Any], budget: _Budget) -> str:
    limit = budget.limits.max_output_chars
    size = 0
    chunks: list[str] = []
    # What ``template.generate(variables)`` runs, without its copy of the variables and Jinja's traceback
    # rewriting (every exception is turned into a RenderError below): about 1 us less per template.
    parent = template.globals.copy()
    parent.update(variables)
    context = Context(_SANDBOX, parent, None, template.blocks, template.globals)
    try:
        for chunk in template.root_render_func(context):
            size += len(chunk)
            if size > limit:
                raise RenderError(f"rendered output exceeds the limit of {limit} characters", reason="output_too_large")
            chunks.append(chunk)
            budget.charge(0)
    except RenderError:
        raise
    except SecurityError as exc:
        raise RenderError(f"template tried an unsafe operation: {exc}", reason="sandbox_violation") from exc
    except UndefinedError as exc:
        reason = "sandbox_violation" if "unsafe" in str(exc) else "template_error"
        raise RenderError(str(exc), reason=reason) from exc
    except RecursionError as exc:
        raise RenderError("template recursed too deeply", reason="render_limit") from exc
    except MemoryError as exc:
        raise RenderError("template used too much memory", reason="render_limit") from exc
    except Exception as exc:  # a filter's own checks (an assert in truncate, a bad argument): the template's fault
        raise RenderError(f"template failed: {exc}") from exc
    return "".join(chunks)


# Filters whose result is not a function of their arguments.
_UNREPEATABLE_FILTERS: Final = frozenset({"random"})


def repeatable_template(ast: nodes.Template) -> bool:
    """Whether the template's output is a function of its variables alone, so a render may be reused.

    The sandbox's globals (``range``, ``dict``, ``cycler``, ``joiner``, ``namespace``), its tests and
    all its filters but ``random`` compute from their arguments only. ``random`` can be reached by its
    name in a ``|random`` or ``{% filter random %}`` and through ``|map``, which calls the filter its first
    argument names: a ``map`` whose name is not a constant other than ``random`` counts as unrepeatable.
    (Printed objects whose text holds a memory address are caught on the output: ``repeatable_output``.)
    """
    for node in ast.find_all(nodes.Filter):
        if node.name in _UNREPEATABLE_FILTERS:
            return False
        if node.name == "map":
            if node.dyn_args is not None or node.dyn_kwargs is not None:
                return False
            if node.args:
                name = node.args[0]
                if not isinstance(name, nodes.Const) or name.value in _UNREPEATABLE_FILTERS:
                    return False
    return True


def repeatable_output(text: str) -> bool:
    """False for output that printed an object by its default ``repr`` (``<... at 0x7f...>``): the address
    differs from render to render, so such an output is not reused even from a repeatable template."""
    return " at 0x" not in text


def _compile(source: str, location: str, *, bounded: bool) -> tuple[Any, bool]:
    """The compiled template, and whether it is repeatable (read before compiling, which rewrites loops)."""
    ast = _parse(source, location, bounded=bounded)
    try:
        repeatable = repeatable_template(ast)
    except RecursionError:  # a stored version nested past the bounds: compiling reports it, or it is not reused
        repeatable = False
    try:
        code = _SANDBOX.compile(ast)
    except TemplateSyntaxError as exc:
        raise TemplateProblemError([TemplateProblem(exc.message or str(exc), exc.lineno, location)]) from exc
    except (RecursionError, SyntaxError, MemoryError) as exc:  # Python's own limits on the generated code
        raise _too_deep("the compiled template is too deeply nested", None, location) from exc
    template = _SANDBOX.template_class.from_code(_SANDBOX, code, _SANDBOX.make_globals(None), None)
    # Jinja2 keeps a template's globals in a ChainMap and copies them into every render's context;
    # copying a plain dict of the same names is much cheaper, and resolves names the same way.
    template.globals = dict(template.globals)
    return template, repeatable


def compile_prompt(
    kind: PromptKind,
    *,
    template: str | None = None,
    messages: Sequence[Mapping[str, str]] | None = None,
    input_schema: Mapping[str, Any] | None = None,
    refuse_unsafe: bool = False,
) -> CompiledPrompt:
    """Check and compile a prompt's templates; raise ``TemplateProblemError`` listing all problems.

    ``refuse_unsafe`` (when a version is saved) also refuses the constructs the sandbox
    would refuse at every render (see ``unsafe_constructs``) and nesting past the bounds
    (``MAX_BRACKET_DEPTH``...), so they are never stored. Versions already stored compile
    without it, so they keep rendering as before.
    """
    if kind == "text":
        if template is None:
            raise TemplateProblemError([TemplateProblem("a text prompt needs a template")])
        sources = {"template": template}
        roles = ["text"]
    else:
        if not messages:
            raise TemplateProblemError(
                [TemplateProblem("a chat prompt needs at least one message", location="messages")]
            )
        sources = {f"messages[{i}]": m["content"] for i, m in enumerate(messages)}
        roles = [m["role"] for m in messages]
    problems: list[TemplateProblem] = []
    compiled: list[tuple[str, Any]] = []
    repeatable = True
    for role, (location, source) in zip(roles, sources.items(), strict=True):
        try:
            template, template_repeatable = _compile(source, location, bounded=refuse_unsafe)
        except TemplateProblemError as exc:
            problems += exc.problems
            continue
        compiled.append((role, template))
        repeatable = repeatable and template_repeatable
        if refuse_unsafe:
            problems += unsafe_constructs(source, location=location)
    if problems:
        raise TemplateProblemError(problems)
    if input_schema is None:
        schema, declared = infer_input_schema(sources), False
    else:
        schema_problems = input_schema_problems(dict(input_schema))
        if schema_problems:
            raise TemplateProblemError([TemplateProblem(p, location="input_schema") for p in schema_problems])
        schema = {"type": "object", **input_schema}
        declared = True
        known = set(schema.get("properties", {}))
        if schema.get("additionalProperties") is not True:
            for location, source in sources.items():
                problems += [
                    TemplateProblem(
                        f"uses variable '{name}', which the input schema does not declare", location=location
                    )
                    for name in template_variables(source, location=location)
                    if name not in known
                ]
        if problems:
            raise TemplateProblemError(problems)
    return CompiledPrompt(kind, schema, declared, tuple(compiled), compile_validator(schema), repeatable)
