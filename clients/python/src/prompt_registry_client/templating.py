"""Sandboxed Jinja2 rendering shared by the registry service and this client.

The service renders prompts with exactly this code, so an app that renders
locally gets byte-identical output. Templates are written by people with the
``write`` scope and variables come from apps, so the sandbox has two jobs:

* no escape to Python internals (Jinja2's immutable sandbox, plus an allowlist
  of string methods), and a missing variable is an error (``StrictUndefined``);
* bounded work: every loop iteration, call and string-building operation is
  charged to a per-render budget (iterations, wall time), and no single
  operation may build a string larger than the output cap. That keeps one
  hostile template from starving the process that renders it.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, Final, Literal

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

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
    "template_variables",
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
    """Bounds on one render. The defaults suit prompts; the service makes them configurable."""

    max_output_chars: int = 200_000
    timeout_seconds: float = 0.25
    max_iterations: int = 100_000


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


# --------------------------------------------------------------------------- budget


class _Budget:
    """Work left for the render in progress; charged by every guarded operation."""

    __slots__ = ("deadline", "iterations_left", "limits")

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.iterations_left = limits.max_iterations
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


_active_budget: ContextVar[_Budget | None] = ContextVar("prompt_render_budget", default=None)


def _budget() -> _Budget:
    budget = _active_budget.get()
    if budget is None:  # a compiled template called outside CompiledPrompt.render
        raise RenderError("templates render only through CompiledPrompt.render")
    return budget


def _approx_size(value: Any) -> int:
    """Characters ``value`` would take once printed, without building the text for strings."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, int | float | bool) or value is None:
        return 24
    return len(repr(value))


# --------------------------------------------------------------------------- sandbox


class _GuardedCodeGenerator(CodeGenerator):
    """Routes loops and ``~`` concatenation through the environment's guards."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:  # noqa: N802 - Jinja2's visitor name
        node.iter = nodes.Call(nodes.EnvironmentAttribute("guard_iteration"), [node.iter], [], None, None)
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:  # noqa: N802 - Jinja2's visitor name
        self.write("environment.guard_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _check_printf(template: str, args: Any) -> None:
    budget = _budget()
    for width, precision in _PRINTF_WIDTH.findall(template):
        for number in (width, precision):
            if number == "*":
                raise SecurityError("'*' widths are not allowed in format strings")
            if number:
                budget.check_size(int(number))
    budget.check_size(len(template) + _approx_size(args))


def _check_str_method(name: str, text: str, args: tuple[Any, ...]) -> None:
    budget = _budget()
    if name in {"center", "ljust", "rjust", "zfill"} and args:
        budget.check_size(int(args[0]))
    elif name == "expandtabs":
        tab_size = int(args[0]) if args else 8
        budget.check_size(len(text) + text.count("\t") * max(tab_size, 0))
    elif name == "replace" and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        count = text.count(old) if old else len(text) + 1
        if len(args) >= 3 and int(args[2]) >= 0:
            count = min(count, int(args[2]))
        budget.check_size(len(text) + count * max(len(new) - len(old), 0))
    elif name == "join" and args:
        items = list(args[0])
        budget.charge(len(items))
        budget.check_size(sum(_approx_size(i) for i in items) + len(text) * len(items))


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a built-in filter: charge the budget, size amplifying arguments, size the result."""

    @wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.charge()
        positional = [a for a in args if not isinstance(a, Context | ImmutableSandboxedEnvironment)]
        if name in {"center", "indent", "wordwrap", "truncate", "slice", "batch"}:
            for number in [*positional[1:], *kwargs.values()]:
                if isinstance(number, int) and not isinstance(number, bool):
                    budget.check_size(abs(number) * (_approx_size(positional[0]) if name == "indent" else 1))
        elif name == "format" and positional:
            _check_printf(str(positional[0]), positional[1:])
        elif name == "replace" and len(positional) >= 3:
            _check_str_method("replace", str(positional[0]), tuple(positional[1:]))
        elif name == "join" and positional:
            items = list(positional[0])
            budget.charge(len(items))
            sep = positional[1] if len(positional) > 1 else kwargs.get("d", "")
            budget.check_size(sum(_approx_size(i) for i in items) + len(str(sep)) * len(items))
            args = (*args[: len(args) - len(positional)], items, *positional[1:])
        result = func(*args, **kwargs)
        if isinstance(result, str | list | tuple | dict):
            budget.check_size(len(result))
        return result

    return guarded


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
        )
        for name in _REMOVED_GLOBALS:
            self.globals.pop(name, None)
        self.filters = {name: _guard_filter(name, func) for name, func in self.filters.items()}

    # -- hooks called by generated code

    def guard_iteration(self, iterable: Iterable[Any]) -> Iterator[Any]:
        budget = _budget()
        for item in iterable:
            budget.charge()
            yield item

    def guard_concat(self, parts: Sequence[Any]) -> str:
        budget = _budget()
        budget.charge()
        pieces = [p if isinstance(p, str) else str(p) for p in parts]
        budget.check_size(sum(len(p) for p in pieces))
        return "".join(pieces)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.charge()
        if operator == "**":
            if isinstance(left, int | float) and isinstance(right, int | float):
                magnitude = abs(float(right)) * math.log2(abs(float(left)) + 2)
                if magnitude > 4096:
                    raise RenderError("exponent too large", reason="render_limit")
        elif operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    budget.check_size(_approx_size(seq) * max(times, 0))
        elif operator == "+" and isinstance(left, str | list | tuple):
            budget.check_size(_approx_size(left) + _approx_size(right))
        elif operator == "%" and isinstance(left, str):
            _check_printf(left, right)
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
            _check_str_method(getattr(__obj, "__name__", ""), owner, args)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, str):
            budget.check_size(len(result))
        return result


_SANDBOX = PromptSandbox()


# --------------------------------------------------------------------------- analysis


def _parse(source: str, location: str) -> nodes.Template:
    try:
        ast = _SANDBOX.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblemError([TemplateProblem(exc.message or str(exc), exc.lineno, location)]) from exc
    for tag in (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends):
        found = next(iter(ast.find_all(tag)), None)
        if found is not None:
            raise TemplateProblemError(
                [
                    TemplateProblem(
                        f"'{tag.__name__.lower()}' is not supported in prompt templates", found.lineno, location
                    )
                ]
            )
    return ast


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


def infer_input_schema(sources: Mapping[str, str]) -> dict[str, Any]:
    """The input schema used when a version declares none: every variable required.

    Variables used only as text must be strings; the others may be any JSON value.
    """
    textual: dict[str, bool] = {}
    for location, source in sources.items():
        for name, only_text in template_variables(source, location=location).items():
            textual[name] = textual.get(name, True) and only_text
    properties = {name: ({"type": "string"} if only_text else {}) for name, only_text in textual.items()}
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
    try:
        for chunk in template.generate(variables):
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
    except (TemplateError, ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as exc:
        raise RenderError(f"template failed: {exc}") from exc
    return "".join(chunks)


def _compile(source: str, location: str) -> Any:
    _parse(source, location)
    try:
        template = _SANDBOX.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblemError([TemplateProblem(exc.message or str(exc), exc.lineno, location)]) from exc
    # Jinja2 keeps a template's globals in a ChainMap and copies them into every render's context;
    # copying a plain dict of the same names is much cheaper, and resolves names the same way.
    template.globals = dict(template.globals)
    return template


def compile_prompt(
    kind: PromptKind,
    *,
    template: str | None = None,
    messages: Sequence[Mapping[str, str]] | None = None,
    input_schema: Mapping[str, Any] | None = None,
) -> CompiledPrompt:
    """Check and compile a prompt's templates; raise ``TemplateProblemError`` listing all problems."""
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
    for role, (location, source) in zip(roles, sources.items(), strict=True):
        try:
            compiled.append((role, _compile(source, location)))
        except TemplateProblemError as exc:
            problems += exc.problems
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
    return CompiledPrompt(kind, schema, declared, tuple(compiled), compile_validator(schema))
