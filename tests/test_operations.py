"""The deployment as shipped: the compose file parses, and it, the README and the Dockerfile agree.

``docker compose config`` (or the standalone ``docker-compose``) only parses and
validates, so it needs no Docker daemon; ``make test`` installs a parser where
it can, and the test says so when none is there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry import __version__
from registry.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SECRETS_DIR = "/var/lib/registry/secrets"


def compose_command() -> list[str] | None:
    """The compose CLI here: Docker's plugin, or the standalone docker-compose."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


def run_compose_config(*arguments: str) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    if command is None:
        pytest.skip("no compose CLI (docker compose or docker-compose); `make test` installs docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_", "VLLM_", "REGISTRY_"))}
    return subprocess.run(
        [*command, "-f", str(ROOT / "docker-compose.yml"), "config", *arguments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_docker_compose_config_accepts_the_compose_file() -> None:
    result = run_compose_config()
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == {"postgres", "redis", "vllm", "migrate", "registry", "worker", "proxy"}
    for name, service in resolved["services"].items():
        image = service["image"]
        assert ":" in image.rsplit("/", 1)[-1], f"{name}: {image} has no tag"
        assert not image.endswith(":latest"), f"{name}: {image}"


def test_docker_compose_config_refuses_an_unknown_option(tmp_path: Path) -> None:
    """The parser validates (so the test above means something), not only loads YAML."""
    broken = (ROOT / "docker-compose.yml").read_text().replace("stop_grace_period:", "stop_grace_periods:")
    (tmp_path / "docker-compose.yml").write_text(broken)
    command = compose_command()
    if command is None:
        pytest.skip("no compose CLI (docker compose or docker-compose); `make test` installs docker-compose")
    result = subprocess.run(
        [*command, "-f", str(tmp_path / "docker-compose.yml"), "config", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "stop_grace_periods" in result.stderr


# --------------------------------------------------------------------------- compose, README, Dockerfile agree


def compose_text() -> str:
    return (ROOT / "docker-compose.yml").read_text()


def compose() -> dict[str, Any]:
    """The compose file with ``${VAR:-default}`` replaced by its default, as a deployment without overrides."""
    interpolated = re.sub(r"\$\{([A-Z_]+)(?::-([^}]*))?\}", lambda m: m.group(2) or "", compose_text())
    document: dict[str, Any] = yaml.safe_load(interpolated)
    return document


def readme_quick_start_config() -> dict[str, Any]:
    """The model config version the README's quick start creates (backend and model)."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r'"backend": "(?P<backend>[^"]+)", "model": "(?P<model>[^"]+)"', readme)
    assert match, "the README's quick start creates a model config version with a backend and a model"
    return match.groupdict()


def flag_value(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_the_compose_backend_and_model_are_those_of_the_readme_quick_start() -> None:
    quick_start = readme_quick_start_config()
    services = compose()["services"]
    backends = json.loads(services["registry"]["environment"]["REGISTRY_BACKENDS"])
    assert quick_start["backend"] in backends
    assert backends[quick_start["backend"]]["url"] == "http://vllm:8000"
    assert flag_value(services["vllm"]["command"], "--served-model-name") == quick_start["model"]
    vllm_cpu = (ROOT / "scripts" / "vllm-cpu.sh").read_text()
    assert f"--served-model-name {quick_start['model']}" in vllm_cpu  # the development server agrees too


def test_no_image_defaults_to_latest_and_vllm_is_the_release_the_tests_run() -> None:
    text = compose_text()
    assert ":latest" not in text
    assert ":-latest}" not in text
    images = {name: service["image"] for name, service in compose()["services"].items()}
    vllm_version = re.search(r"^VLLM_VERSION=(\S+)$", (ROOT / "scripts" / "vllm-cpu.sh").read_text(), re.M)
    assert vllm_version
    assert images["vllm"] == f"vllm/vllm-openai:v{vllm_version.group(1)}"
    for role in ("migrate", "registry", "worker"):
        assert images[role] == f"prompt-registry:{__version__}", role


def healthcheck_url(service: dict[str, Any]) -> str:
    test = " ".join(service["healthcheck"]["test"])
    match = re.search(r"http://127\.0\.0\.1(?::(\d+))?(/\S*?)['\"\s]", test + " ")
    assert match, test
    return f":{match.group(1) or 80}{match.group(2)}"


def test_each_compose_service_has_the_health_check_of_its_role() -> None:
    services = compose()["services"]
    settings = Settings()
    assert healthcheck_url(services["registry"]) == f":{settings.port}/ready"
    assert services["worker"]["environment"]["REGISTRY_WORKER_PORT"] == str(settings.worker_port)
    assert healthcheck_url(services["worker"]) == f":{settings.worker_port}/health"
    assert healthcheck_url(services["proxy"]) == ":80/health"
    assert services["migrate"]["healthcheck"] == {"disable": True}
    for name in ("postgres", "redis", "vllm"):
        assert services[name]["healthcheck"]["test"], name
    drain = int(services["registry"]["environment"]["REGISTRY_SHUTDOWN_DRAIN_SECONDS"])
    assert 0 < drain < int(services["registry"]["stop_grace_period"].rstrip("s"))


def test_the_dockerfile_health_check_follows_the_role_and_its_ports_match_the_settings() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    settings = Settings()
    assert f"REGISTRY_PORT={settings.port}" in dockerfile
    assert f"REGISTRY_WORKER_PORT={settings.worker_port}" in dockerfile
    assert f"EXPOSE {settings.port} {settings.worker_port}" in dockerfile
    healthcheck = dockerfile[dockerfile.index("HEALTHCHECK") :].split("\n\n")[0]
    assert "REGISTRY_ROLE" in healthcheck
    assert "REGISTRY_WORKER_PORT" in healthcheck
    assert "/health" in healthcheck
    assert f"install -d -m 0700 -o registry -g registry {SECRETS_DIR}" in dockerfile


def test_the_proxy_re_resolves_replica_addresses_through_dockers_dns() -> None:
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert re.search(r"^resolver 127\.0\.0\.11 valid=\d+s", nginx, re.M)
    assert re.search(r"^\s*server registry:8000 resolve\b", nginx, re.M)
    assert re.search(r"^\s*zone registry \d+k;", nginx, re.M)  # "resolve" needs a shared zone
    image = compose()["services"]["proxy"]["image"]
    major, minor = (int(part) for part in re.findall(r"nginx:(\d+)\.(\d+)", image)[0])
    assert (major, minor) >= (1, 28), "upstream 'resolve' needs nginx 1.27.3 or later"


def test_the_migrate_job_writes_the_first_admin_key_to_a_private_file_and_not_to_its_log(tmp_path: Path) -> None:
    """The job's own shell command, run here against a fresh SQLite database with the secrets folder moved."""
    migrate = compose()["services"]["migrate"]
    assert migrate["entrypoint"] == ["/bin/sh", "-c"]
    assert f"registry-secrets:{SECRETS_DIR}" in migrate["volumes"]
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    script = migrate["command"][0].replace(SECRETS_DIR, str(secrets))
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["REGISTRY_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    env["REGISTRY_LOG_LEVEL"] = "WARNING"

    first = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    second = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=120)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    log = secrets / "migrate.log"
    keys = re.findall(r"export REGISTRY_API_KEY=(prk_\S+)", log.read_text())
    assert len(keys) == 1, "the first run created one key; the second found it and created none"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    for run in (first, second):
        assert "prk_" not in run.stdout + run.stderr
        assert "migrate.log" in run.stderr  # the log says where to look
