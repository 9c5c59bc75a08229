"""The experiment form to the API's request, and the service's field errors to the form's fields (pure)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from registry.console.experiments_form import (
    ExperimentForm,
    ExperimentFormError,
    create_request,
    service_errors,
    update_request,
    without_unchanged,
)
from registry.experiments.schemas import ExperimentDefinition
from registry.lib.errors import FieldError

CASES = json.loads((Path(__file__).parent / "cases" / "experiment_form.json").read_text())


class Sent(dict[str, Any]):
    """A submitted form as the page sends it: the default form's fields, then the case's."""

    def getall(self, key: str) -> list[Any]:
        return [self[key]] if key in self else []


def sent(fields: dict[str, str]) -> Sent:
    defaults = {"variant_key_0": "control", "variant_version_0": "1", "variant_weight_0": "50"}
    defaults |= {"variant_key_1": "treatment", "variant_version_1": "2", "variant_weight_1": "50"}
    return Sent(defaults | fields)


@pytest.mark.parametrize(("fields", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_form_becomes_the_apis_request_or_its_problems(fields: dict[str, str], expected: dict[str, Any]) -> None:
    form = ExperimentForm.sent(sent(fields))
    if "errors" in expected:
        with pytest.raises(ExperimentFormError) as refused:
            create_request(form)
        assert refused.value.errors == expected["errors"]
        return
    request = msgspec.to_builtins(create_request(form))
    assert {k: request.get(k) for k in expected["request"]} == expected["request"]


def test_the_services_field_errors_land_beside_the_form_fields() -> None:
    errors = [
        FieldError("variants[1].prompt_version", "prompt has no version 9"),
        FieldError("variants[0].config", "no config is named 'x'"),
        FieldError("metrics", "no metric is named 'm'"),
        FieldError("forced_variants.qa", "'z' is not a variant"),
        FieldError("something_else", "odd"),
    ]
    assert service_errors(errors) == {
        "variant_version_1": "prompt has no version 9",
        "variant_config_0": "no config is named 'x'",
        "primary_metric": "no metric is named 'm'",
        "forced_variants": "'z' is not a variant",
        "form": "something_else: odd",
    }


def running(**fields: Any) -> ExperimentDefinition:
    """A running experiment's definition as the API returns it: weights 1 and 2, a third of units."""
    moment = "2026-01-01T00:00:00Z"
    variants = [
        {"key": "control", "prompt_version": 1, "weight": 1 / 3, "config": None},
        {"key": "treatment", "prompt_version": 2, "weight": 2 / 3, "config": None},
    ]
    body = {
        "key": "k",
        "description": "",
        "prompt": "p",
        "status": "running",
        "phase": 1,
        "variants": variants,
        "coverage": 1 / 3,
        "hash_seed": "k",
        "hash_attribute": "id",
        "hash_version": 2,
        "namespace": {"name": "ns", "start": 1 / 3, "end": 2 / 3},
        "forced_variants": {},
        "primary_metric": "clicked",
        "guardrail_metrics": ["latency"],
        "correction": "holm",
        "alpha": 0.05,
        "sequential": False,
        "sequential_tuning": 5000.0,
        "cuped": False,
        "cuped_lookback_days": 14,
        "winner": None,
        "stop_reason": None,
        "created_at": moment,
        "created_by": "a",
        "updated_at": moment,
        "updated_by": "a",
        "started_at": moment,
        "stopped_at": None,
        "phases": [],
        "assignment": {
            "key": "k",
            "variations": ["control", "treatment"],
            "seed": "k",
            "hashVersion": 2,
            "hashAttribute": "id",
            "weights": [1 / 3, 2 / 3],
            "coverage": 1 / 3,
            "namespace": None,
            "phase": "1",
        },
    }
    return msgspec.convert(body | fields, ExperimentDefinition)


def test_a_running_experiment_sent_back_as_shown_changes_nothing_that_routes_or_rebuilds() -> None:
    current = running()
    form = ExperimentForm.of(current)
    shown = Sent(
        {
            "variant_key_0": "control",
            "variant_weight_0": form.variants[0].weight,
            "variant_key_1": "treatment",
            "variant_weight_1": form.variants[1].weight,
            "coverage": form.coverage,
            "namespace_name": "ns",
            "namespace_start": form.namespace_start,
            "namespace_end": form.namespace_end,
            "hash_seed": "k",
            "forced_variants": "",
        }
    )
    request = without_unchanged(
        update_request(
            ExperimentForm.sent(Sent(shown | {"primary_metric": "clicked", "guardrail_metrics": "latency"})),
            status="running",
            sent=shown,
        ),
        current,
    )
    left = {
        name
        for name in ("weights", "coverage", "namespace", "primary_metric", "guardrail_metrics", "alpha")
        if getattr(request, name) is not msgspec.UNSET
    }
    assert left == set()
    changed = Sent(shown | {"variant_weight_1": "70"})
    request = without_unchanged(update_request(ExperimentForm.sent(changed), status="running", sent=changed), current)
    assert request.weights == {"control": pytest.approx(33.3333), "treatment": 70.0}
