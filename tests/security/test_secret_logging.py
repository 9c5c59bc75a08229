"""API key secrets never reach the logs: not at creation, not on valid or rejected requests."""

from __future__ import annotations

import json
import re
import subprocess

import httpx
import pytest

from registry.auth.keys import parse_key
from tests.security.conftest import LiveServer
from tests.test_cli import KEY, REGISTRY


@pytest.mark.parametrize("live_server", [{"REGISTRY_LOG_LEVEL": "DEBUG", "REGISTRY_ACCESS_LOG": "true"}], indirect=True)
def test_no_key_or_secret_appears_in_any_log_line(live_server: LiveServer) -> None:
    created = subprocess.run(
        [REGISTRY, "keys", "create", "--name", "from-cli", "--scopes", "read"],
        env=live_server.env,
        capture_output=True,
        text=True,
        check=True,
    )
    cli_key = KEY.findall(created.stdout)[0]
    admin = {"Authorization": f"Bearer {live_server.admin_key}"}
    with httpx.Client(base_url=live_server.url) as http:
        api_key = http.post("/v1/keys", json={"name": "from-api", "scopes": ["write"]}, headers=admin).json()["key"]
        keys = [live_server.admin_key, cli_key, api_key]
        for key in keys:
            assert http.get("/v1/prompts", headers={"Authorization": f"Bearer {key}"}).status_code in (200, 403)
            public_id, secret = parse_key(key) or ("", "")
            wrong_secret = f"prk_{public_id}_{secret[::-1]}"
            assert http.get("/v1/prompts", headers={"Authorization": f"Bearer {wrong_secret}"}).status_code == 401
            assert http.get("/v1/prompts", headers={"Authorization": f"Basic {key}"}).status_code == 401
            assert http.get("/v1/prompts", headers={"Authorization": key}).status_code == 401
            assert http.get(f"/v1/prompts/{key}", headers={"Authorization": "Bearer nope"}).status_code == 401
        revoked_id = (parse_key(api_key) or ("", ""))[0]
        assert http.delete(f"/v1/keys/{revoked_id}", headers=admin).status_code == 200
        assert http.get("/v1/prompts", headers={"Authorization": f"Bearer {api_key}"}).status_code == 401
    live_server.server.stop()

    lines = [
        line for name in ("stdout.log", "stderr.log") for line in (live_server.log_dir / name).read_text().splitlines()
    ]
    secrets = [part for key in keys for part in (key, (parse_key(key) or ("", ""))[1])]
    leaks = [line for line in lines for secret in secrets if secret in line]
    requests = [line for line in lines if line.startswith("{") and json.loads(line).get("event") == "request"]
    print(f"secret logging: {len(lines)} log lines ({len(requests)} requests), {len(secrets)} secrets, 0 leaks")
    assert len(requests) >= 5 * len(keys)
    assert leaks == []
    assert not any(re.search(r"prk_[a-z2-9]{12}_[A-Za-z0-9_-]{43}", line) for line in lines)
