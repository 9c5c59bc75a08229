"""The playground's variables form, built from a prompt version's input schema, as pure functions.

Each property of the schema becomes the input that fits its type, so a person fills a number in a
number field and a list one item per line, not JSON by hand: ``string`` (or a list of types with
it) a text field (a text box when it may be long), ``integer``/``number`` a number field,
``boolean`` a checkbox, ``enum`` a select, an array of strings or numbers a text box of lines; a
variable the schema leaves open (no type) a text box read as JSON when it is JSON, else as text;
anything else (objects, other arrays, other lists of types) a text box of JSON. What the form sends is converted back to
JSON values here; whether they satisfy the schema is the prompt's own validator's call, at render.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from registry.lib.errors import FieldError

FieldKind = Literal["text", "textarea", "integer", "number", "boolean", "enum", "lines", "json", "any"]
ItemKind = Literal["string", "integer", "number"]

SHORT_TEXT = 200  # a string at most this long gets a one-line field
_SCALARS: dict[str, FieldKind] = {"integer": "integer", "number": "number", "boolean": "boolean"}
_LINE_ITEMS: dict[str, ItemKind] = {"string": "string", "integer": "integer", "number": "number"}


@dataclass(frozen=True, slots=True)
class VariableField:
    """One input of the variables form."""

    name: str
    kind: FieldKind
    required: bool
    label: str  # the schema's title, else the variable's name
    description: str
    choices: tuple[Any, ...] = ()  # enum: the schema's values; the form sends an index
    item_kind: ItemKind | None = None  # lines: the type of each line
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    initial: str = ""  # the schema's default, as the field shows it

    @property
    def options(self) -> list[str]:
        """Each enum value as the select shows it."""
        return [_as_text(value) for value in self.choices]


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _kind(spec: Mapping[str, Any]) -> tuple[FieldKind, ItemKind | None]:
    if isinstance(spec.get("enum"), list) and spec["enum"]:
        return "enum", None
    declared = spec.get("type")
    if declared is None and "const" not in spec:
        return "any", None
    if declared == "string" or (isinstance(declared, list) and "string" in declared):
        limit = spec.get("maxLength")
        return ("text" if isinstance(limit, int) and limit <= SHORT_TEXT else "textarea"), None
    if isinstance(declared, str) and declared in _SCALARS:
        return _SCALARS[declared], None
    items = spec.get("items")
    if declared == "array" and isinstance(items, Mapping) and "enum" not in items:
        item_kind = _LINE_ITEMS.get(str(items.get("type")))
        if item_kind is not None:
            return "lines", item_kind
    return "json", None


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: ``true`` is not ``1``."""
    return type(a) is type(b) and a == b


def _initial(kind: FieldKind, spec: Mapping[str, Any], choices: Sequence[Any]) -> str:
    if "default" not in spec:
        return ""
    default = spec["default"]
    if kind == "enum":
        return next((str(i) for i, choice in enumerate(choices) if _same(choice, default)), "")
    if kind == "boolean":
        return "true" if default is True else ""
    if kind == "lines" and isinstance(default, list):
        return "\n".join(_as_text(item) for item in default)
    if kind == "json" or (kind == "any" and not isinstance(default, str)):
        return json.dumps(default, ensure_ascii=False, indent=2)
    return _as_text(default)


def variable_fields(schema: Mapping[str, Any]) -> list[VariableField]:
    """The form's inputs for one input schema, in the schema's order of properties."""
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return []
    required = set(schema.get("required") or ())
    fields = []
    for name, raw in properties.items():
        spec: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        kind, item_kind = _kind(spec)
        enum = list(spec["enum"]) if kind == "enum" else []
        title, description = spec.get("title"), spec.get("description")
        limit = spec.get("maxLength")
        fields.append(
            VariableField(
                name=str(name),
                kind=kind,
                required=name in required,
                label=title if isinstance(title, str) and title.strip() else str(name),
                description=description if isinstance(description, str) else "",
                choices=tuple(enum),
                item_kind=item_kind,
                minimum=_number(spec.get("minimum")),
                maximum=_number(spec.get("maximum")),
                max_length=limit if isinstance(limit, int) and not isinstance(limit, bool) else None,
                initial=_initial(kind, spec, enum),
            )
        )
    return fields


def merged_fields(schemas: Iterable[Mapping[str, Any]]) -> list[VariableField]:
    """One form for several versions run on the same variables: each name once, as the first schema has it.

    A variable is required when any of the versions requires it.
    """
    merged: dict[str, VariableField] = {}
    for schema in schemas:
        for found in variable_fields(schema):
            known = merged.get(found.name)
            if known is None:
                merged[found.name] = found
            elif found.required and not known.required:
                merged[found.name] = replace(known, required=True)
    return list(merged.values())


def variables_for(schema: Mapping[str, Any], variables: Mapping[str, Any]) -> dict[str, Any]:
    """The variables one version is given: those it declares, when its schema refuses any other."""
    if schema.get("additionalProperties") is False:
        declared = schema.get("properties") or {}
        return {name: value for name, value in variables.items() if name in declared}
    return dict(variables)


# --------------------------------------------------------------------------- reading the form back


class _UnreadableError(ValueError):
    """A value the field cannot hold, in words for the form."""


def _integer(text: str) -> int:
    try:
        return int(text.strip().replace(",", "").replace("_", ""))
    except ValueError:
        raise _UnreadableError("must be a whole number") from None


def _float(text: str) -> int | float:
    cleaned = text.strip().replace(",", "").replace("_", "")
    try:
        return int(cleaned)
    except ValueError:
        pass
    try:
        number = float(cleaned)
    except ValueError:
        raise _UnreadableError("must be a number") from None
    if not math.isfinite(number):
        raise _UnreadableError("must be a finite number")
    return number


def _line_item(text: str, kind: ItemKind | None) -> Any:
    if kind == "integer":
        return _integer(text)
    if kind == "number":
        return _float(text)
    return text


def _value(field: VariableField, text: str) -> Any:
    if field.kind == "integer":
        return _integer(text)
    if field.kind == "number":
        return _float(text)
    if field.kind == "enum":
        if not text.isdigit() or int(text) >= len(field.choices):
            raise _UnreadableError("choose one of the listed values")
        return field.choices[int(text)]
    if field.kind == "lines":
        lines = [line for line in text.split("\n") if line.strip()]
        try:
            return [_line_item(line, field.item_kind) for line in lines]
        except _UnreadableError as problem:
            raise _UnreadableError(f"every line {problem}") from None
    if field.kind == "any":
        try:
            return json.loads(text)
        except ValueError:
            return text
    if field.kind == "json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise _UnreadableError(f"is not valid JSON ({exc.args[0] if exc.args else exc})") from None
    return text


def normalized(text: str) -> str:
    """A submitted value with the browser's line breaks (CRLF) as the template's (LF)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def parse_variables(
    fields: Sequence[VariableField], submitted: Mapping[str, str]
) -> tuple[dict[str, Any], list[FieldError]]:
    """The variables a submitted form holds, and what could not be read.

    ``submitted`` maps a variable's name to its field's text (absent: an unticked checkbox or a
    field the form did not have). An empty field of an optional variable is left out; a checkbox
    is ``true`` ticked, ``false`` not.
    """
    variables: dict[str, Any] = {}
    problems: list[FieldError] = []
    for field in fields:
        text = normalized(submitted.get(field.name, ""))
        if field.kind == "boolean":
            variables[field.name] = bool(text)
            continue
        keeps_empty = field.kind in ("text", "textarea", "lines", "any")
        if not text.strip() and not (field.required and keeps_empty):
            if field.required:
                problems.append(FieldError(field.name, "is required"))
            continue
        try:
            value = _value(field, text)
        except _UnreadableError as problem:
            problems.append(FieldError(field.name, str(problem)))
            continue
        variables[field.name] = value
    return variables, problems
