"""Scorers of an evaluation run: their specs as the API takes them, and how an output is scored.

Every scorer here is deterministic and pure; the model-graded ``judge`` is only parsed and
validated here, its score comes from the judge's completion and enters through ``judge_score``.
A scorer gives a value in [0, 1], whether it passed, and a short reason; a run's pass rule
combines the scorers of one item into a ``Verdict``.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

import jsonschema
import referencing.exceptions
import regex
from jsonschema.exceptions import ValidationError, best_match

from registry.db.text import nul_location
from registry.lib.errors import FieldError, InvalidInputError

MAX_SCORERS = 20
MAX_PATTERN_LENGTH = 1_000
REGEX_TIMEOUT_S = 0.1
# What all of a JSON Schema's patterns may take on one output, together (``JsonSchema``).
SCHEMA_PATTERNS_TIMEOUT_S = 0.5
_SHOWN_CHARACTERS = 60


class ScorerInvalidError(InvalidInputError):
    """A scorer or the pass rule is invalid; ``errors`` lists each field by the scorer's index."""

    type = "scorer_invalid"
    title = "Scorer invalid"


@dataclass(frozen=True, slots=True)
class ScoreInput:
    """What one item's completion gave, and what the item expected.

    ``error`` is set when the completion failed: every scorer then scores 0 and names the error.
    """

    output: str
    expected: str | None = None
    variables: Mapping[str, Any] = field(default_factory=dict)
    latency_ms: float | None = None
    ttft_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost: float | None = None
    error: str | None = None
    cached: bool = False  # answered from the exact cache: no latency or cost of the model was measured


@dataclass(frozen=True, slots=True)
class Score:
    value: float
    passed: bool
    reason: str


def _pass(reason: str) -> Score:
    return Score(1.0, True, reason)


def _fail(reason: str, value: float = 0.0) -> Score:
    return Score(value, False, reason)


def _show(text: str) -> str:
    """A text for a reason: quoted, and cut short when long."""
    if len(text) > _SHOWN_CHARACTERS:
        text = text[: _SHOWN_CHARACTERS - 1] + "…"
    return repr(text)


def _number(value: float) -> str:
    return f"{value:g}"


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True, slots=True, kw_only=True)
class _Spec:
    """Fields every scorer has. ``name`` labels it in results; it defaults to the kind."""

    kind: ClassVar[str]
    weight: float = 1.0
    name: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The spec with its defaults filled in, as stored with a run; ``parse_scorers`` reads it back.
        Fields not given (None, or no values) are left out."""
        fields = {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}
        return {"kind": self.kind, **{key: value for key, value in fields.items() if value not in (None, [])}}


@dataclass(frozen=True, slots=True, kw_only=True)
class _TextOptions(_Spec):
    case_sensitive: bool = True
    strip: bool = True

    def normalize(self, text: str) -> str:
        text = text.strip() if self.strip else text
        return text if self.case_sensitive else text.casefold()

    def compare(self, output: str, wanted: str, what: str) -> Score:
        if self.normalize(output) == self.normalize(wanted):
            return _pass(f"equals {what}")
        return _fail(f"expected {_show(wanted)}, got {_show(output)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExactMatch(_TextOptions):
    """The output equals the item's expected output (stripped of surrounding white space by default)."""

    kind: ClassVar[str] = "exact_match"

    def score(self, inp: ScoreInput) -> Score:
        if inp.expected is None:
            return _fail("the item has no expected output")
        return self.compare(inp.output, inp.expected, "the expected output")


@dataclass(frozen=True, slots=True, kw_only=True)
class EqualsVariable(_TextOptions):
    """The output equals one of the item's variables (a non-string variable as its JSON text)."""

    kind: ClassVar[str] = "equals_variable"
    variable: str

    def score(self, inp: ScoreInput) -> Score:
        if self.variable not in inp.variables:
            return _fail(f"the item has no variable {self.variable!r}")
        value = inp.variables[self.variable]
        wanted = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        return self.compare(inp.output, wanted, f"variable {self.variable!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Contains(_Spec):
    """The output contains the values: every one (``mode`` all: the value is the share found) or any one.

    Without ``values`` the item's expected output is the one value looked for.
    """

    kind: ClassVar[str] = "contains"
    values: tuple[str, ...] = ()
    mode: Literal["all", "any"] = "all"
    case_sensitive: bool = True

    def score(self, inp: ScoreInput) -> Score:
        values = self.values
        if not values:
            if inp.expected is None:
                return _fail("the item has no expected output to look for")
            values = (inp.expected,)
        missing = _absent(values, inp.output, self.case_sensitive)
        found = len(values) - len(missing)
        if self.mode == "any":
            if found:
                return _pass(f"contains {_show(next(v for v in values if v not in missing))}")
            return _fail(f"contains none of {', '.join(_show(v) for v in values)}")
        if not missing:
            return _pass("contains " + ", ".join(_show(v) for v in values))
        return _fail("missing " + ", ".join(_show(v) for v in missing), found / len(values))


@dataclass(frozen=True, slots=True, kw_only=True)
class NotContains(_Spec):
    """The output contains none of the values; the value is the share of them absent."""

    kind: ClassVar[str] = "not_contains"
    values: tuple[str, ...]
    case_sensitive: bool = True

    def score(self, inp: ScoreInput) -> Score:
        absent = _absent(self.values, inp.output, self.case_sensitive)
        if len(absent) == len(self.values):
            return _pass("contains none of " + ", ".join(_show(v) for v in self.values))
        present = [v for v in self.values if v not in absent]
        return _fail("contains " + ", ".join(_show(v) for v in present), len(absent) / len(self.values))


def _absent(values: Sequence[str], output: str, case_sensitive: bool) -> list[str]:
    haystack = output if case_sensitive else output.casefold()
    return [v for v in values if (v if case_sensitive else v.casefold()) not in haystack]


@dataclass(frozen=True, slots=True, kw_only=True)
class Regex(_Spec):
    """The pattern is found somewhere in the output (a search, as ``re.search``); anchor it with
    ``^``/``$`` (or ``\\A``/``\\Z``) to match the whole output.

    Patterns run on the ``regex`` library (Python's ``re`` syntax) for its time limit: a search that
    backtracks past ``REGEX_TIMEOUT_S`` fails the item instead of stalling the worker.
    """

    kind: ClassVar[str] = "regex"
    pattern: str
    ignore_case: bool = False

    def score(self, inp: ScoreInput) -> Score:
        flags = regex.IGNORECASE if self.ignore_case else 0
        try:
            found = regex.search(self.pattern, inp.output, flags, timeout=REGEX_TIMEOUT_S)
        except TimeoutError:
            return _fail(f"searching /{self.pattern}/ took over {_number(REGEX_TIMEOUT_S)} s; simplify the pattern")
        if found:
            return _pass(f"matches {_show(found.group(0))}")
        return _fail(f"no match for /{self.pattern}/ in {_show(inp.output)}")


def _load_json(text: str) -> Any:
    """JSON as the standard defines it: no NaN or Infinity, which Python's parser would accept."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    try:
        return json.loads(text, parse_constant=refuse)
    except RecursionError:  # a model's output of a few thousand "[": the item fails, not the run
        raise ValueError("nested too deep to read") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidJson(_Spec):
    """The whole output (surrounding white space aside) is one JSON value."""

    kind: ClassVar[str] = "valid_json"

    def score(self, inp: ScoreInput) -> Score:
        try:
            _load_json(inp.output)
        except ValueError as exc:
            return _fail(f"not valid JSON: {exc}")
        return _pass("valid JSON")


class _PatternTimeoutError(Exception):
    def __init__(self, pattern: str) -> None:
        super().__init__(pattern)
        self.pattern = pattern


# When the JSON Schema validation under way must end its pattern searches (``_timed_search``).
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("schema_patterns_deadline", default=None)


@contextlib.contextmanager
def _patterns_deadline(deadline: float) -> Iterator[None]:
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def _timed_search(pattern: str, text: str) -> bool:
    """``re.search`` as JSON Schema's keywords use it, on the ``regex`` library within what is left of the
    validation's time (``_patterns_deadline``); past it, ``_PatternTimeoutError``."""
    deadline = _deadline.get()
    remaining = REGEX_TIMEOUT_S if deadline is None else deadline - time.monotonic()
    if remaining <= 0:
        raise _PatternTimeoutError(pattern)
    try:
        return regex.search(pattern, text, timeout=remaining) is not None
    except TimeoutError:
        raise _PatternTimeoutError(pattern) from None


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _timed_search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _timed_search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, additional: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    if "patternProperties" not in schema:  # no pattern: the library's own
        yield from _LIBRARY_ADDITIONAL_PROPERTIES(validator, additional, instance, schema)
        return
    named, patterns = schema.get("properties", {}), list(schema["patternProperties"])
    extras = [k for k in instance if k not in named and not any(_timed_search(p, k) for p in patterns)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        shown = ", ".join(repr(extra) for extra in sorted(extras))
        yield ValidationError(f"{shown} not matched by any of the patterns {', '.join(map(repr, sorted(patterns)))}")


_LIBRARY_ADDITIONAL_PROPERTIES = jsonschema.Draft202012Validator.VALIDATORS["additionalProperties"]
_TIMED: dict[type, type] = {}


def _timed_patterns(base: type) -> Any:
    """The draft's validator whose pattern keywords search with a time limit (``_timed_search``): Python's
    ``re``, which jsonschema uses, backtracks without end on a pattern such as ``^(a+)+$`` and holds the worker
    (the whole process's event loop) meanwhile. ``unevaluatedProperties`` beside ``patternProperties`` is
    refused when the scorer is read (``_read_json_schema``): the library matches those patterns itself."""
    timed = _TIMED.get(base)
    if timed is None:
        keywords = {"pattern": _pattern, "patternProperties": _pattern_properties}
        if "additionalProperties" in base.VALIDATORS:  # type: ignore[attr-defined]
            keywords["additionalProperties"] = _additional_properties
        timed = _TIMED[base] = jsonschema.validators.extend(base, keywords)  # type: ignore[no-untyped-call]
    return timed


def _has_keys(value: Any, keys: set[str]) -> set[str]:
    """Which of ``keys`` appear as keywords anywhere in a schema."""
    found: set[str] = set()
    if isinstance(value, dict):
        found |= keys & value.keys()
        for item in value.values():
            found |= _has_keys(item, keys)
    elif isinstance(value, list):
        for item in value:
            found |= _has_keys(item, keys)
    return found


@dataclass(frozen=True, slots=True, kw_only=True)
class JsonSchema(_Spec):
    """The output is JSON valid against the schema (its draft from ``$schema``, the latest otherwise).

    Its patterns run on the ``regex`` library with a time limit for them all (``SCHEMA_PATTERNS_TIMEOUT_S``),
    and a schema that cannot be applied (a ``$ref`` that resolves to nothing or to itself without end) fails
    the item with a reason rather than the run.
    """

    kind: ClassVar[str] = "json_schema"
    schema: Mapping[str, Any]

    def score(self, inp: ScoreInput) -> Score:
        try:
            document = _load_json(inp.output)
        except ValueError as exc:
            return _fail(f"not valid JSON: {exc}")
        validator = _timed_patterns(jsonschema.validators.validator_for(self.schema))(self.schema)
        try:
            with _patterns_deadline(time.monotonic() + SCHEMA_PATTERNS_TIMEOUT_S):
                error = best_match(validator.iter_errors(document))
        except _PatternTimeoutError as exc:
            return _fail(
                f"the schema's patterns took over {_number(SCHEMA_PATTERNS_TIMEOUT_S)} s "
                f"(at /{exc.pattern}/); simplify them"
            )
        except regex.error as exc:
            return _fail(f"a pattern of the schema is not supported: {exc}")
        except RecursionError:
            return _fail("the output nests too deep to check, or the schema refers to itself without end ($ref)")
        except referencing.exceptions.Unresolvable as exc:
            return _fail(f"the schema has a $ref that cannot be resolved: {exc}")
        if error is None:
            return _pass("valid against the schema")
        return _fail(f"at {error.json_path}: {error.message}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Length(_Spec):
    """The output's length in characters, or in words (runs of non-white-space), is within the bounds."""

    kind: ClassVar[str] = "length"
    min: int | None = None
    max: int | None = None
    unit: Literal["characters", "words"] = "characters"

    def score(self, inp: ScoreInput) -> Score:
        length = len(inp.output.split()) if self.unit == "words" else len(inp.output)
        shown = f"{length} {self.unit if length != 1 else self.unit[:-1]}"
        if self.min is not None and length < self.min:
            return _fail(f"{shown}, below the minimum {self.min}")
        if self.max is not None and length > self.max:
            return _fail(f"{shown}, above the maximum {self.max}")
        return _pass(shown)


# A decimal number, with optional thousands separators (1,234.5) and exponent; "-" counts as its sign.
_NUMBER = re.compile(r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def first_number(text: str) -> float | None:
    """The first number written in decimal notation in the text, or None: "about 1,234.5 km" gives 1234.5."""
    found = _NUMBER.search(text)
    return float(found.group(0).replace(",", "")) if found else None


@dataclass(frozen=True, slots=True, kw_only=True)
class NumericClose(_Spec):
    """The first number in the output is close to ``value``, or to the first number of the expected output.

    Close as ``math.isclose``: ``|got - want| <= max(rel_tol * max(|got|, |want|), abs_tol)``.
    """

    kind: ClassVar[str] = "numeric_close"
    value: float | None = None
    abs_tol: float = 0.0
    rel_tol: float = 1e-9

    def score(self, inp: ScoreInput) -> Score:
        want = self.value
        if want is None:
            want = None if inp.expected is None else first_number(inp.expected)
            if want is None:
                return _fail("the item's expected output has no number")
        got = first_number(inp.output)
        if got is None:
            return _fail(f"no number in {_show(inp.output)}")
        if math.isclose(got, want, rel_tol=self.rel_tol, abs_tol=self.abs_tol):
            return _pass(f"{_number(got)} is close to {_number(want)}")
        return _fail(f"expected {_number(want)}, got {_number(got)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Maximum(_Spec):
    """At most ``max`` of a fact of the completion record (``ScoreInput``'s ``attribute``); a fact not
    recorded fails."""

    max: float
    what: ClassVar[str]
    attribute: ClassVar[str]
    unit: ClassVar[str] = ""

    def fact(self, inp: ScoreInput) -> tuple[str, float | None]:
        value: float | None = getattr(inp, self.attribute)
        return self.what, value

    def score(self, inp: ScoreInput) -> Score:
        what, value = self.fact(inp)
        if value is None:
            return _fail(
                f"no {what} of the model measured: the answer came from the cache"
                if inp.cached
                else f"no {what} recorded"
            )
        shown = f"{what} {_number(value)}{self.unit}"
        if value <= self.max:
            return _pass(f"{shown}, within {_number(self.max)}{self.unit}")
        return _fail(f"{shown}, above the maximum {_number(self.max)}{self.unit}")


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencyMax(_Maximum):
    kind: ClassVar[str] = "latency_max_ms"
    what: ClassVar[str] = "latency"
    attribute: ClassVar[str] = "latency_ms"
    unit: ClassVar[str] = " ms"


@dataclass(frozen=True, slots=True, kw_only=True)
class CostMax(_Maximum):
    kind: ClassVar[str] = "cost_max"
    what: ClassVar[str] = "cost"
    attribute: ClassVar[str] = "cost"


@dataclass(frozen=True, slots=True, kw_only=True)
class TokensMax(_Maximum):
    """``count``: the input (prompt) tokens, the output tokens, or their total."""

    kind: ClassVar[str] = "tokens_max"
    count: Literal["input", "output", "total"] = "total"

    def fact(self, inp: ScoreInput) -> tuple[str, float | None]:
        if self.count == "input":
            return "input tokens", inp.input_tokens
        if self.count == "output":
            return "output tokens", inp.output_tokens
        if inp.input_tokens is None or inp.output_tokens is None:
            return "total tokens", None
        return "total tokens", inp.input_tokens + inp.output_tokens


@dataclass(frozen=True, slots=True, kw_only=True)
class Judge(_Spec):
    """A prompt of the registry grades the output with a score in [0, 1]; it passes at ``min_score``.

    ``version`` or ``label`` picks the judge prompt's version (its production version by default);
    ``config`` and ``config_version`` pick another model config than the judge prompt's own.
    """

    kind: ClassVar[str] = "judge"
    prompt: str
    version: int | None = None
    label: str | None = None
    config: str | None = None
    config_version: int | None = None
    min_score: float = 0.5


DeterministicScorer = (
    ExactMatch
    | EqualsVariable
    | Contains
    | NotContains
    | Regex
    | ValidJson
    | JsonSchema
    | Length
    | NumericClose
    | LatencyMax
    | CostMax
    | TokensMax
)
ScorerSpec = DeterministicScorer | Judge


def score(spec: ScorerSpec, inp: ScoreInput) -> Score:
    """Score one item's completion. A failed completion scores 0 on every scorer, the judge's included."""
    if inp.error is not None:
        return _fail(f"the completion failed: {inp.error}")
    if isinstance(spec, Judge):
        raise TypeError("a judge scorer is scored by its judge's completion; see judge_score")
    return spec.score(inp)


def judge_score(spec: Judge, value: float, reason: str) -> Score:
    """The score a judge answered, held to ``min_score``; a score outside [0, 1] fails and says so."""
    if not 0.0 <= value <= 1.0:
        return _fail(f"the judge's score {_number(value)} is outside [0, 1]: {reason}")
    return Score(value, value >= spec.min_score, reason)


# --------------------------------------------------------------------------- pass rule


@dataclass(frozen=True, slots=True)
class PassRule:
    """How an item passes: every scorer passes (both fields None, the default), the weighted mean of
    the scorers' values reaches ``min_score``, or at least ``min_passed`` scorers pass."""

    min_score: float | None = None
    min_passed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.min_score is not None:
            return {"min_score": self.min_score}
        if self.min_passed is not None:
            return {"min_passed": self.min_passed}
        return {"all": True}


@dataclass(frozen=True, slots=True)
class Verdict:
    """One item's result: the weighted mean of its scorers' values, whether it passed the rule,
    and the indexes of the scorers that failed."""

    score: float
    passed: bool
    failed: tuple[int, ...]


def combine(specs: Sequence[ScorerSpec], scores: Sequence[Score], rule: PassRule) -> Verdict:
    if len(specs) != len(scores) or not specs:
        raise ValueError(f"{len(scores)} scores for {len(specs)} scorers")
    total_weight = sum(s.weight for s in specs)
    mean = sum(spec.weight * sc.value for spec, sc in zip(specs, scores, strict=True)) / total_weight
    failed = tuple(i for i, sc in enumerate(scores) if not sc.passed)
    if rule.min_score is not None:
        passed = mean >= rule.min_score
    elif rule.min_passed is not None:
        passed = len(scores) - len(failed) >= rule.min_passed
    else:
        passed = not failed
    return Verdict(mean, passed, failed)


# --------------------------------------------------------------------------- parsing

_MISSING: Any = object()


class _Reader:
    """Reads the typed fields of one object of the request, collecting a problem per bad field."""

    def __init__(self, raw: Mapping[str, Any], where: str, problems: list[FieldError]) -> None:
        self.raw = raw
        self.where = where
        self.problems = problems
        self.seen: set[str] = set()

    def problem(self, name: str, message: str) -> None:
        self.problems.append(FieldError(f"{self.where}.{name}" if name else self.where, message))

    def take(self, name: str, default: Any = _MISSING) -> Any:
        self.seen.add(name)
        value = self.raw.get(name, default)
        if value is _MISSING:
            self.problem(name, "is required")
        return value

    def text(self, name: str, default: Any = _MISSING, *, non_empty: bool = True) -> Any:
        value = self.take(name, default)
        if value is _MISSING or value is default:
            return default
        if not isinstance(value, str) or (non_empty and not value):
            self.problem(name, "must be a non-empty string" if non_empty else "must be a string")
            return default
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.take(name, default)
        if not isinstance(value, bool):
            self.problem(name, "must be true or false")
            return default
        return value

    def number(self, name: str, default: Any = _MISSING, *, minimum: float = -math.inf, integer: bool = False) -> Any:
        value = self.take(name, default)
        if value is _MISSING or value is default:
            return default
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
            self.problem(name, f"must be {kind}")
            return default
        if not math.isfinite(value):
            self.problem(name, f"must be a finite number, not {value}")
            return default
        if value < minimum:
            self.problem(name, f"must be {kind} of at least {_number(minimum)}, not {_number(value)}")
            return default
        return value if integer else float(value)

    def choice(self, name: str, options: tuple[str, ...], default: str) -> Any:
        value = self.take(name, default)
        if value not in options:
            self.problem(name, f"must be one of {', '.join(options)}, not {value!r}")
            return default
        return value

    def unknown(self) -> None:
        for name in self.raw:
            if name not in self.seen:
                self.problem(name, "is not a field of this scorer")


def _read_values(r: _Reader, *, required: bool) -> tuple[str, ...]:
    """``value`` (one string) or ``values`` (a list of strings)."""
    if "value" in r.raw:
        if "values" in r.raw:
            r.seen.add("values")
            r.problem("values", "give value or values, not both")
        return (r.text("value"),)
    if "values" not in r.raw:
        if required:
            r.problem("value", "is required (or values, a list of strings)")
        return ()
    values = r.take("values")
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        r.problem("values", "must be a non-empty list of non-empty strings")
        return ()
    return tuple(values)


def _read_text_options(r: _Reader) -> dict[str, Any]:
    return {"case_sensitive": r.flag("case_sensitive", True), "strip": r.flag("strip", True)}


def _read_contains(r: _Reader) -> dict[str, Any]:
    return {
        "values": _read_values(r, required=False),
        "mode": r.choice("mode", ("all", "any"), "all"),
        "case_sensitive": r.flag("case_sensitive", True),
    }


def _read_not_contains(r: _Reader) -> dict[str, Any]:
    return {"values": _read_values(r, required=True), "case_sensitive": r.flag("case_sensitive", True)}


def _read_regex(r: _Reader) -> dict[str, Any]:
    pattern = r.text("pattern")
    if isinstance(pattern, str):
        if len(pattern) > MAX_PATTERN_LENGTH:
            r.problem("pattern", f"is {len(pattern)} characters, over the limit of {MAX_PATTERN_LENGTH}")
        else:
            try:
                regex.compile(pattern)
            except regex.error as exc:
                r.problem("pattern", f"not a valid regular expression: {exc}")
    return {"pattern": pattern, "ignore_case": r.flag("ignore_case", False)}


def _read_json_schema(r: _Reader) -> dict[str, Any]:
    schema = r.take("schema")
    if schema is _MISSING:
        return {"schema": {}}
    if not isinstance(schema, dict):
        r.problem("schema", "must be a JSON Schema object")
        return {"schema": {}}
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        r.problem("schema", f"not a valid JSON Schema: {exc.message}")
    except RecursionError:
        r.problem("schema", "nests too deep to check")
    if _has_keys(schema, {"unevaluatedProperties", "patternProperties"}) == {
        "unevaluatedProperties",
        "patternProperties",
    }:
        r.problem("schema", "unevaluatedProperties with patternProperties is not supported; use additionalProperties")
    return {"schema": schema}


def _read_length(r: _Reader) -> dict[str, Any]:
    low = r.number("min", None, minimum=0, integer=True)
    high = r.number("max", None, minimum=0, integer=True)
    if r.raw.get("min") is None and r.raw.get("max") is None:
        r.problem("max", "give min, max or both")
    elif low is not None and high is not None and low > high:
        r.problem("max", f"must be at least min ({low}), not {high}")
    return {"min": low, "max": high, "unit": r.choice("unit", ("characters", "words"), "characters")}


def _read_numeric_close(r: _Reader) -> dict[str, Any]:
    return {
        "value": r.number("value", None),
        "abs_tol": r.number("abs_tol", 0.0, minimum=0),
        "rel_tol": r.number("rel_tol", 1e-9, minimum=0),
    }


def _read_equals_variable(r: _Reader) -> dict[str, Any]:
    return {"variable": r.text("variable"), **_read_text_options(r)}


def _read_maximum(r: _Reader) -> dict[str, Any]:
    return {"max": r.number("max", minimum=0)}


def _read_tokens_max(r: _Reader) -> dict[str, Any]:
    return {
        "max": r.number("max", minimum=0, integer=True),
        "count": r.choice("count", ("input", "output", "total"), "total"),
    }


def _read_judge(r: _Reader) -> dict[str, Any]:
    fields = {
        "prompt": r.text("prompt"),
        "version": r.number("version", None, minimum=1, integer=True),
        "label": r.text("label", None),
        "config": r.text("config", None),
        "config_version": r.number("config_version", None, minimum=1, integer=True),
        "min_score": r.number("min_score", 0.5, minimum=0),
    }
    if fields["version"] is not None and fields["label"] is not None:
        r.problem("label", "give version or label, not both")
    if fields["config_version"] is not None and fields["config"] is None:
        r.problem("config_version", "needs config, the config's name")
    if isinstance(fields["min_score"], float | int) and fields["min_score"] > 1:
        r.problem("min_score", f"must be within [0, 1], not {_number(fields['min_score'])}")
    return fields


_KINDS: dict[str, tuple[type[ScorerSpec], Callable[[_Reader], dict[str, Any]]]] = {
    ExactMatch.kind: (ExactMatch, _read_text_options),
    EqualsVariable.kind: (EqualsVariable, _read_equals_variable),
    Contains.kind: (Contains, _read_contains),
    NotContains.kind: (NotContains, _read_not_contains),
    Regex.kind: (Regex, _read_regex),
    ValidJson.kind: (ValidJson, lambda r: {}),
    JsonSchema.kind: (JsonSchema, _read_json_schema),
    Length.kind: (Length, _read_length),
    NumericClose.kind: (NumericClose, _read_numeric_close),
    LatencyMax.kind: (LatencyMax, _read_maximum),
    CostMax.kind: (CostMax, _read_maximum),
    TokensMax.kind: (TokensMax, _read_tokens_max),
    Judge.kind: (Judge, _read_judge),
}
SCORER_KINDS = tuple(_KINDS)


def _parse_one(raw: Any, where: str, problems: list[FieldError]) -> ScorerSpec | None:
    if not isinstance(raw, Mapping):
        problems.append(FieldError(where, "must be an object with a kind"))
        return None
    r = _Reader(raw, where, problems)
    before = len(problems)
    kind = r.take("kind")
    if kind is _MISSING:
        return None
    if not isinstance(kind, str) or kind not in _KINDS:
        r.problem("kind", f"must be one of {', '.join(SCORER_KINDS)}, not {kind!r}")
        return None
    cls, read = _KINDS[kind]
    weight = r.number("weight", 1.0, minimum=0)
    name = r.text("name", kind)
    fields = read(r)
    r.unknown()
    if len(problems) > before:
        return None
    return cls(weight=float(weight), name=name, **fields)


def _raise(problems: list[FieldError]) -> None:
    if problems:
        raise ScorerInvalidError("; ".join(f"{p.field}: {p.message}" for p in problems), errors=problems)


def parse_scorers(raw: Any) -> tuple[ScorerSpec, ...]:
    """The scorers of a run from the request's ``scorers`` list; raises ``ScorerInvalidError`` naming
    every bad field as ``scorers[INDEX].FIELD``."""
    problems: list[FieldError] = []
    specs: list[ScorerSpec] = []
    if not isinstance(raw, list | tuple) or not raw:
        problems.append(FieldError("scorers", "must be a non-empty list of scorers"))
    elif len(raw) > MAX_SCORERS:
        problems.append(FieldError("scorers", f"has {len(raw)} scorers, over the limit of {MAX_SCORERS}"))
    else:
        for i, item in enumerate(raw):
            # Stored with the run (or the gate) as JSON, which PostgreSQL cannot hold a NUL in: refused by name.
            where = nul_location(item, f"scorers[{i}]")
            if where is not None:
                problems.append(FieldError(where, "holds a NUL (U+0000), which cannot be stored"))
                continue
            spec = _parse_one(item, f"scorers[{i}]", problems)
            if spec is not None:
                specs.append(spec)
        if not problems and sum(s.weight for s in specs) <= 0:
            problems.append(FieldError("scorers", "the weights add up to 0; give at least one scorer a weight"))
    _raise(problems)
    return tuple(specs)


def parse_pass_rule(raw: Any, scorers: Sequence[ScorerSpec]) -> PassRule:
    """The run's pass rule: ``{"all": true}`` (the default, also for None), ``{"min_score": X}``
    with X in [0, 1], or ``{"min_passed": K}`` with K from 1 to the number of scorers."""
    problems: list[FieldError] = []
    rule = PassRule()
    if raw is None:
        return rule
    if not isinstance(raw, Mapping) or len(raw) != 1:
        problems.append(FieldError("pass_rule", 'must be one of {"all": true}, {"min_score": X}, {"min_passed": K}'))
    elif "all" in raw:
        if raw["all"] is not True:
            problems.append(FieldError("pass_rule.all", "must be true"))
    elif "min_score" in raw:
        r = _Reader(raw, "pass_rule", problems)
        value = r.number("min_score", minimum=0)
        if not problems and value > 1:
            r.problem("min_score", f"must be within [0, 1], not {_number(value)}")
        rule = PassRule(min_score=value)
    elif "min_passed" in raw:
        r = _Reader(raw, "pass_rule", problems)
        count = r.number("min_passed", minimum=1, integer=True)
        if not problems and count > len(scorers):
            r.problem("min_passed", f"is {count}, more than the {len(scorers)} scorers")
        rule = PassRule(min_passed=count)
    else:
        problems.append(
            FieldError(f"pass_rule.{next(iter(raw))}", "is not a pass rule; use all, min_score or min_passed")
        )
    _raise(problems)
    return rule
