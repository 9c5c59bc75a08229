"""The experiment form: what it shows, and how what it sends becomes the API's own request (pure).

Every field is checked with the type the API's schema gives it (``CreateExperiment``,
``UpdateExperiment``, ``VariantIn``), one by one, so the form shows every problem at once next
to its field; the experiment service then checks what needs the database (the prompt, its
versions, configs, metrics) and its errors are put next to their fields too. Coverage and
namespace ranges are percentages on the form and fractions in the API.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import msgspec

from registry.configs.schemas import ConfigRef
from registry.experiments.schemas import (
    CreateExperiment,
    ExperimentDefinition,
    NamespaceIn,
    UpdateExperiment,
    VariantIn,
)
from registry.lib.errors import FieldError

S = TypeVar("S", bound=msgspec.Struct)
MAX_VARIANTS = 20
SPARE_VARIANT_ROWS = 1  # empty rows under the variants, to add one without scripts
CORRECTIONS = ("holm", "benjamini-hochberg", "none")
ROUTING_FIELDS = ("weights", "coverage", "hash_seed", "namespace", "forced_variants")
_CONFIG_LABELS = ("production", "staging", "latest")
_SERVICE_FIELD = re.compile(r"^variants\[(\d+)\]\.(\w+)")


class FormData(Protocol):
    """What a submitted form is (Litestar's ``FormMultiDict``): values by name, some repeated."""

    def get(self, key: str, default: str, /) -> Any: ...

    def getall(self, key: str) -> list[Any]: ...

    def __contains__(self, key: object) -> bool: ...


def metric_matches(key: str, wanted: str) -> bool:
    """Whether a metric's key matches the guardrail filter: every word typed is in it, whatever the case."""
    lowered = key.lower()
    return all(word in lowered for word in wanted.lower().split())


def guardrails_sent(ticked: list[str], typed: str) -> list[str]:
    """The guardrail metrics chosen: those ticked, then the keys typed (for metrics not offered), each once."""
    keys = [*ticked, *typed.replace(",", " ").split()]
    return list(dict.fromkeys(key.strip() for key in keys if key.strip()))


@dataclass(slots=True)
class VariantRow:
    key: str = ""
    version: str = ""
    weight: str = ""
    config: str = ""

    @property
    def empty(self) -> bool:
        return not (self.key.strip() or self.version.strip() or self.config.strip())


@dataclass(slots=True)
class ExperimentForm:
    """The form's values as text, as typed (a refused form shows them again) or as stored."""

    key: str = ""
    prompt: str = ""
    description: str = ""
    variants: list[VariantRow] = field(
        default_factory=lambda: [VariantRow("control", "1", "50"), VariantRow("treatment", "2", "50")]
    )
    primary_metric: str = ""
    guardrail_metrics: list[str] = field(default_factory=list)
    guardrail_filter: str = ""  # what the guardrail list is narrowed to (the page's own, never sent to the API)
    coverage: str = "100"
    hash_attribute: str = "id"
    hash_seed: str = ""
    hash_version: str = "2"
    namespace_name: str = ""
    namespace_start: str = "0"
    namespace_end: str = "100"
    forced_variants: str = ""
    correction: str = "holm"
    alpha: str = "0.05"
    sequential: bool = False
    sequential_tuning: str = "5000"
    cuped: bool = False
    cuped_lookback_days: str = "14"
    reason: str = ""

    @property
    def rows(self) -> list[VariantRow]:
        """The variants and the spare empty rows the page shows."""
        spare = max(0, min(SPARE_VARIANT_ROWS, MAX_VARIANTS - len(self.variants)))
        return [*self.variants, *(VariantRow() for _ in range(spare))]

    @classmethod
    def of(cls, experiment: ExperimentDefinition) -> ExperimentForm:
        namespace = experiment.namespace
        return cls(
            key=experiment.key,
            prompt=experiment.prompt,
            description=experiment.description,
            variants=[
                VariantRow(
                    v.key,
                    str(v.prompt_version),
                    _short(v.weight * 100),  # the share in percent: weights are relative
                    f"{v.config.name}@{v.config.version}" if v.config else "",
                )
                for v in experiment.variants
            ],
            primary_metric=experiment.primary_metric or "",
            guardrail_metrics=list(experiment.guardrail_metrics),
            coverage=_short(experiment.coverage * 100),
            hash_attribute=experiment.hash_attribute,
            hash_seed=experiment.hash_seed,
            hash_version=str(experiment.hash_version),
            namespace_name=namespace.name if namespace else "",
            namespace_start=_short(namespace.start * 100) if namespace else "0",
            namespace_end=_short(namespace.end * 100) if namespace else "100",
            forced_variants="\n".join(f"{unit} = {variant}" for unit, variant in experiment.forced_variants.items()),
            correction=experiment.correction,
            alpha=_short(experiment.alpha),
            sequential=experiment.sequential,
            sequential_tuning=_short(experiment.sequential_tuning),
            cuped=experiment.cuped,
            cuped_lookback_days=str(experiment.cuped_lookback_days),
        )

    @classmethod
    def sent(cls, form: FormData) -> ExperimentForm:
        def text(name: str, default: str = "") -> str:
            value = form.get(name, default)
            return value if isinstance(value, str) else default

        variants = []
        for i in range(MAX_VARIANTS):
            row = VariantRow(
                text(f"variant_key_{i}"),
                text(f"variant_version_{i}"),
                text(f"variant_weight_{i}"),
                text(f"variant_config_{i}"),
            )
            if not row.empty:
                variants.append(row)
        return cls(
            key=text("key"),
            prompt=text("prompt"),
            description=text("description"),
            variants=variants,
            primary_metric=text("primary_metric"),
            guardrail_metrics=guardrails_sent(
                [g for g in form.getall("guardrail_metrics") if isinstance(g, str)]
                if "guardrail_metrics" in form
                else [],
                text("more_guardrail_metrics"),
            ),
            guardrail_filter=text("guardrail_filter").strip()[:128],
            coverage=text("coverage", "100"),
            hash_attribute=text("hash_attribute", "id"),
            hash_seed=text("hash_seed"),
            hash_version=text("hash_version", "2"),
            namespace_name=text("namespace_name"),
            namespace_start=text("namespace_start", "0"),
            namespace_end=text("namespace_end", "100"),
            forced_variants=text("forced_variants"),
            correction=text("correction", "holm"),
            alpha=text("alpha", "0.05"),
            sequential=bool(text("sequential")),
            sequential_tuning=text("sequential_tuning", "5000"),
            cuped=bool(text("cuped")),
            cuped_lookback_days=text("cuped_lookback_days", "14"),
            reason=text("reason"),
        )


def _short(value: float) -> str:
    """A number as short as it reads: 1 not 1.0, 0.05, 33.33."""
    return f"{value:.6g}"


class ExperimentFormError(Exception):
    """The form's problems by field name (``form`` for the form as a whole)."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = dict(errors)


def _message(exc: msgspec.ValidationError) -> str:
    """msgspec's message without its JSON path, in the form's words."""
    text = str(exc).split(" - at `", 1)[0]
    return text.replace("Expected `str` of length >= 1", "Required").replace("`", "")


class _Checker:
    """Converts each value with its schema type, collecting every problem."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def convert(self, form_field: str, value: Any, schema: type[msgspec.Struct], name: str) -> Any:
        kind = next(f.type for f in msgspec.structs.fields(schema) if f.name == name)
        try:
            return msgspec.convert(value, kind)
        except msgspec.ValidationError as exc:
            self.errors.setdefault(form_field, _message(exc))
            return None

    def number(self, form_field: str, text: str, *, whole: bool = False, percent: bool = False) -> float | None:
        cleaned = text.strip().rstrip("%").strip().replace(",", "")
        try:
            value = int(cleaned) if whole else float(cleaned)
        except ValueError:
            self.errors.setdefault(form_field, "Enter a whole number" if whole else "Enter a number")
            return None
        if percent:
            if not 0 <= value <= 100:
                self.errors.setdefault(form_field, "Enter a percentage from 0 to 100")
                return None
            return value / 100
        return value


def _config(checker: _Checker, form_field: str, text: str) -> ConfigRef | None:
    """``name``, ``name@3`` or ``name@production`` (a label is pinned to its version when saved)."""
    text = text.strip()
    if not text:
        return None
    name, _, pin = text.rpartition("@") if "@" in text else (text, "", "")
    body: dict[str, Any] = {"name": name}
    if pin.isdigit():
        body["version"] = int(pin)
    elif pin in _CONFIG_LABELS:
        body["label"] = pin
    elif pin:
        checker.errors[form_field] = "Write the config as name@version or name@production"
        return None
    try:
        return msgspec.convert(body, ConfigRef)
    except msgspec.ValidationError as exc:
        checker.errors[form_field] = _message(exc)
        return None


def _variants(checker: _Checker, rows: Sequence[VariantRow]) -> list[VariantIn]:
    variants = []
    for i, row in enumerate(rows):
        key = checker.convert(f"variant_key_{i}", row.key.strip(), VariantIn, "key")
        version = checker.number(f"variant_version_{i}", row.version, whole=True)
        version = checker.convert(f"variant_version_{i}", version, VariantIn, "prompt_version") if version else version
        weight = checker.number(f"variant_weight_{i}", row.weight)
        weight = checker.convert(f"variant_weight_{i}", weight, VariantIn, "weight") if weight is not None else None
        config = _config(checker, f"variant_config_{i}", row.config)
        if key is not None and version and weight is not None:
            variants.append(VariantIn(key=key, prompt_version=int(version), weight=weight, config=config))
    if len(rows) < 2:
        checker.errors.setdefault("variants", "An experiment needs at least two variants")
    return variants


def _forced(checker: _Checker, text: str) -> dict[str, str]:
    """One ``unit = variant`` a line."""
    forced: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        unit, sign, variant = line.partition("=")
        if not sign or not unit.strip() or not variant.strip():
            checker.errors.setdefault("forced_variants", f"Line {number}: write unit = variant")
            continue
        forced[unit.strip()] = variant.strip()
    converted = checker.convert("forced_variants", forced, CreateExperiment, "forced_variants")
    return converted if converted is not None else {}


def _analysis(checker: _Checker, form: ExperimentForm, schema: type[msgspec.Struct]) -> dict[str, Any]:
    """The settings of the analysis (every status may change them)."""
    values: dict[str, Any] = {
        "description": checker.convert("description", form.description, schema, "description"),
        "primary_metric": form.primary_metric.strip() or None,
        "guardrail_metrics": checker.convert("guardrail_metrics", form.guardrail_metrics, schema, "guardrail_metrics"),
        "correction": checker.convert("correction", form.correction, schema, "correction"),
        "sequential": form.sequential,
        "cuped": form.cuped,
    }
    for name, whole in (("alpha", False), ("sequential_tuning", False), ("cuped_lookback_days", True)):
        number = checker.number(name, getattr(form, name), whole=whole)
        values[name] = checker.convert(name, number, schema, name) if number is not None else None
    return values


def _routing(checker: _Checker, form: ExperimentForm, schema: type[msgspec.Struct]) -> dict[str, Any]:
    """Coverage, seed, namespace and forced variants: what decides which variant a unit gets."""
    coverage = checker.number("coverage", form.coverage, percent=True)
    values: dict[str, Any] = {
        "coverage": coverage,
        "forced_variants": _forced(checker, form.forced_variants),
        "namespace": None,
    }
    if form.hash_seed.strip():
        values["hash_seed"] = checker.convert("hash_seed", form.hash_seed.strip(), schema, "hash_seed")
    if form.namespace_name.strip():
        start = checker.number("namespace_start", form.namespace_start, percent=True)
        end = checker.number("namespace_end", form.namespace_end, percent=True)
        values["namespace"] = {"name": form.namespace_name.strip(), "start": start, "end": end}
        if start is not None and end is not None and start >= end:
            checker.errors.setdefault("namespace_end", "The end must be above the start")
    return values


def _hash_version(checker: _Checker, form: ExperimentForm, schema: type[msgspec.Struct]) -> Any:
    number = checker.number("hash_version", form.hash_version, whole=True)
    return checker.convert("hash_version", number, schema, "hash_version") if number is not None else None


_NULLABLE = ("namespace", "primary_metric")  # None is a value to send (none), not a field that failed


def _finish(checker: _Checker, values: Mapping[str, Any], schema: type[S]) -> S:
    if checker.errors:
        raise ExperimentFormError(checker.errors)
    try:
        return msgspec.convert({k: v for k, v in values.items() if v is not None or k in _NULLABLE}, schema)
    except msgspec.ValidationError as exc:  # a rule across fields the checks above do not see
        path = str(exc).rpartition("$.")[2].rstrip("`").split(".")[0].split("[")[0]
        raise ExperimentFormError(
            {path if path in ExperimentForm.__dataclass_fields__ else "form": _message(exc)}
        ) from exc


def create_request(form: ExperimentForm) -> CreateExperiment:
    """``POST /v1/experiments``'s request from the form, or every problem with it."""
    checker = _Checker()
    values: dict[str, Any] = {
        "key": checker.convert("key", form.key.strip(), CreateExperiment, "key"),
        "prompt": checker.convert("prompt", form.prompt.strip(), CreateExperiment, "prompt"),
        "variants": _variants(checker, form.variants),
        "hash_attribute": checker.convert(
            "hash_attribute", form.hash_attribute.strip(), CreateExperiment, "hash_attribute"
        ),
        "hash_version": _hash_version(checker, form, CreateExperiment),
        **_routing(checker, form, CreateExperiment),
        **_analysis(checker, form, CreateExperiment),
    }
    return _finish(checker, values, CreateExperiment)


def update_request(form: ExperimentForm, *, status: str, sent: FormData) -> UpdateExperiment:
    """``PATCH /v1/experiments/{key}``'s request: what the status lets change, and routing only if the form held it.

    A page never offers routing fields to a key that may not change them on a running experiment;
    when a request carries them anyway, the service refuses it (403), as the API does.
    """
    checker = _Checker()
    values: dict[str, Any] = _analysis(checker, form, UpdateExperiment)
    if status == "draft":
        values["variants"] = _variants(checker, form.variants)
        values["hash_attribute"] = checker.convert(
            "hash_attribute", form.hash_attribute.strip(), UpdateExperiment, "hash_attribute"
        )
        values["hash_version"] = _hash_version(checker, form, UpdateExperiment)
        values |= _routing(checker, form, UpdateExperiment)
    elif status == "running":
        routing = _routing(checker, form, UpdateExperiment)
        values |= {k: v for k, v in routing.items() if _sent(k, sent)}
        weights = {}
        for i in range(MAX_VARIANTS):
            if f"variant_weight_{i}" in sent and f"variant_key_{i}" in sent:
                weight = checker.number(f"variant_weight_{i}", form_value(sent, f"variant_weight_{i}"))
                weights[form_value(sent, f"variant_key_{i}")] = checker.convert(
                    f"variant_weight_{i}", weight, VariantIn, "weight"
                )
        if weights:
            values["weights"] = weights
        if form.reason.strip():
            values["reason"] = checker.convert("reason", form.reason.strip(), UpdateExperiment, "reason")
    return _finish(checker, values, UpdateExperiment)


def _close(a: float, b: float) -> bool:
    """Equal at the form's precision: numbers are shown with six significant digits."""
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9)


def without_unchanged(request: UpdateExperiment, current: ExperimentDefinition) -> UpdateExperiment:
    """Leave out numbers the form sent back as shown: a rounded share must not start a new phase.

    A running experiment's weights of 1 and 2 show as 33.3333 and 66.6667; sent back, they differ
    from the stored ones in the seventh digit, which the service would rightly take for new weights.
    """
    changes: dict[str, Any] = {}
    if request.weights is not msgspec.UNSET:
        shares = {v.key: v.weight for v in current.variants}
        total = sum(request.weights.values())
        if all(_close(weight / total, shares.get(key, -1.0)) for key, weight in request.weights.items()):
            changes["weights"] = msgspec.UNSET
    for name in ("coverage", "alpha", "sequential_tuning"):
        value = getattr(request, name)
        if value is not msgspec.UNSET and _close(value, getattr(current, name)):
            changes[name] = msgspec.UNSET
    if request.primary_metric is not msgspec.UNSET and request.primary_metric == current.primary_metric:
        changes["primary_metric"] = msgspec.UNSET
    # Metrics sent at all are relinked and the statistics rebuilt: only when they changed.
    if request.guardrail_metrics is not msgspec.UNSET and list(request.guardrail_metrics) == current.guardrail_metrics:
        changes["guardrail_metrics"] = msgspec.UNSET
    sent, now = request.namespace, current.namespace
    if isinstance(sent, NamespaceIn) and now is not None and sent.name == now.name:
        changes["namespace"] = msgspec.UNSET if _close(sent.start, now.start) and _close(sent.end, now.end) else sent
    return msgspec.structs.replace(request, **changes) if changes else request


def form_value(sent: FormData, name: str) -> str:
    value = sent.get(name, "")
    return value if isinstance(value, str) else ""


def _sent(routing_field: str, sent: FormData) -> bool:
    inputs = {"namespace": "namespace_name", "hash_seed": "hash_seed"}
    return inputs.get(routing_field, routing_field) in sent


_UNKNOWN_METRIC = re.compile(r"^no metric is named '(.*)'$", re.S)


def _metric_field(message: str, guardrails: Sequence[str]) -> str:
    """Where the service's unknown metric was typed: a guardrail's key, or else the primary metric."""
    unknown = _UNKNOWN_METRIC.match(message)
    return "guardrail_metrics" if unknown and unknown.group(1) in guardrails else "primary_metric"


def service_errors(errors: Sequence[FieldError], guardrails: Sequence[str] = ()) -> dict[str, str]:
    """The service's field errors (``variants[1].prompt_version``, ``forced_variants.qa``…) by form field.

    The service names every unknown metric under ``metrics``: one that the form chose as a guardrail is put
    next to the guardrails, where it was typed, not next to the primary metric. Several at one field read as one.
    """
    found: dict[str, str] = {}
    for error in errors:
        if error.field == "metrics":
            name = _metric_field(error.message, guardrails)
            found[name] = f"{found[name]}; {error.message}" if name in found else error.message
            continue
        match = _SERVICE_FIELD.match(error.field)
        if match:
            index, name = match.groups()
            column = {"prompt_version": "version", "config": "config", "key": "key", "weight": "weight"}.get(
                name, "key"
            )
            found.setdefault(f"variant_{column}_{index}", error.message)
            continue
        name = error.field.split(".")[0].split("[")[0]
        name = {"weights": "variants", "namespace": "namespace_name"}.get(name, name)
        known = name in ExperimentForm.__dataclass_fields__
        found.setdefault(name if known else "form", error.message if known else f"{error.field}: {error.message}")
    return found


__all__ = [
    "CORRECTIONS",
    "ROUTING_FIELDS",
    "ExperimentForm",
    "ExperimentFormError",
    "VariantRow",
    "create_request",
    "metric_matches",
    "service_errors",
    "update_request",
]
