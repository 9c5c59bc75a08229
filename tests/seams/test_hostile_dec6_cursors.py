"""A list's ``cursor`` is the caller's to send back, so it may be any JSON: one of another kind than the column its
list is ordered by (a number for a name, a name for an id, a boolean, null, a float, an integer past 64 bits) is a
400 naming ``cursor``, not a comparison the database cannot make (500) nor a 422 about a value of the request.
"""

from __future__ import annotations

import base64
import json

from tests.conftest import AppClient, problem
from tests.experiments.conftest import make_prompt

Headers = dict[str, str]

# Lists ordered by a text column, then by an integer one.
BY_TEXT = ["/v1/prompts", "/v1/configs", "/v1/metrics", "/v1/experiments", "/v1/evals/datasets"]
BY_NUMBER = [
    "/v1/keys",
    "/v1/audit",
    "/v1/prompts/paged/versions",
    "/v1/prompts/paged/history",
    "/v1/webhooks",
    "/v1/alerts/rules",
]
NOT_TEXT = ["[5]", "[null]", "[true]", "[1e999]", '["' + "a" * 1001 + '"]', '["a\\u0000"]']
NOT_NUMBER = ['["abc"]', "[null]", "[true]", "[-1.5]", "[NaN]", "[100000000000000000000000000]", '["\\u0000"]']


def cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


async def test_a_cursor_of_another_kind_than_its_list_is_a_400_naming_the_cursor(
    client: AppClient, admin: Headers
) -> None:
    await make_prompt(client, admin, "paged", versions=3)
    tampered = [(path, raw) for path in BY_TEXT for raw in NOT_TEXT]
    tampered += [(path, raw) for path in BY_NUMBER for raw in NOT_NUMBER]
    tampered.append(("/v1/prompts", "[" * 3000 + "]" * 3000))  # nested past what the JSON parser recurses into
    answers: dict[tuple[str, str], tuple[int, str]] = {}
    for path, raw in tampered:
        response = await client.get(path, params={"cursor": cursor(raw)}, headers=admin)
        named = problem(response)["errors"][0]["field"] if response.status_code == 400 else response.text
        answers[(path, raw[:20])] = (response.status_code, named)
    assert {where: answer for where, answer in answers.items() if answer != (400, "cursor")} == {}

    # The cursors the lists hand out still page through them.
    first = (await client.get("/v1/prompts/paged/versions", params={"limit": 2}, headers=admin)).json()
    rest = await client.get("/v1/prompts/paged/versions", params={"cursor": first["next_cursor"]}, headers=admin)
    assert [v["version"] for v in first["items"] + rest.json()["items"]] == [3, 2, 1]
    assert json.loads(base64.urlsafe_b64decode(first["next_cursor"] + "==")) == [2]
