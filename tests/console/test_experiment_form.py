"""The experiment form to the API's request, and the service's field errors to the form's fields (pure)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from registry.console.experiments_form import ExperimentForm, ExperimentFormError, create_request, service_errors
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
