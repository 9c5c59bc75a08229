"""A model config's ``params.extra`` may not carry what would slip past the limits the completion path keeps."""

from __future__ import annotations

import pytest

from tests.conftest import AppClient, problem
from tests.seams.conftest import ok


@pytest.mark.parametrize(
    "extra",
    [
        # vLLM takes it over max_tokens: the config's max_tokens, a caller's lower one and the context check
        # (which reads max_tokens) would all be passed by.
        {"max_completion_tokens": 4096},
        # More sequences generated than returned (and, streamed, vLLM answers them unstreamed): cost no usage says.
        {"best_of": 4},
    ],
    ids=["max_completion_tokens", "best_of"],
)
async def test_extra_params_that_pass_the_token_limits_by_are_refused_by_name(
    client: AppClient, admin: dict[str, str], extra: dict[str, int]
) -> None:
    await ok(await client.post("/v1/configs", json={"name": "capped"}, headers=admin))
    body = {"backend": "local", "model": "tiny", "params": {"max_tokens": 64, "extra": extra}}

    response = await client.post("/v1/configs/capped/versions", json=body, headers=admin)

    assert response.status_code == 422, response.text
    [name] = extra
    assert [error["field"] for error in problem(response)["errors"]] == [f"params.extra.{name}"]
