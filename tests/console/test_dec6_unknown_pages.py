"""An address under /console that no page serves answers with the console's error page, as a page's own errors do:
a person following an old link or a typo in a browser got a problem+json document. The API keeps its documents."""

from __future__ import annotations

from tests.console.conftest import LiveRegistry
from tests.console.test_dec6_refused_forms import sign_in


async def test_a_console_address_no_page_serves_is_an_error_page_and_the_apis_stay_documents(
    live: LiveRegistry,
) -> None:
    async with live.http() as client:
        await sign_in(client, live.keys["reader"])
        for method, path, status in [
            ("GET", "/console/rollouts", 404),
            ("GET", "/console/no/such/page", 404),
            ("DELETE", "/console/prompts", 405),
        ]:
            page = await client.request(method, path)

            assert (page.status_code, page.headers["content-type"].split(";")[0]) == (status, "text/html"), path
            assert f"Error {status}" in page.text
            assert 'href="/console/prompts"' in page.text  # the way back
        api = await client.get("/v1/no-such-route")
        assert api.headers["content-type"] == "application/problem+json"
        door = await client.get("/v1/chat/completions/x")
        assert door.status_code == 404
        assert "error" in door.json()  # the OpenAI door's own error object
