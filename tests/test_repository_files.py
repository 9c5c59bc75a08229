"""Files users read or deploy stay in step with the code."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_configuration_table_matches_the_settings() -> None:
    spec = importlib.util.spec_from_file_location("settings_table", ROOT / "scripts" / "settings_table.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (ROOT / "README.md").read_text()
    assert module.updated_readme(readme) == readme, "run: .venv/bin/python scripts/settings_table.py --write"


def compose() -> dict[str, Any]:
    text = (ROOT / "docker-compose.yml").read_text()
    interpolated = re.sub(r"\$\{([A-Z_]+)(?::-([^}]*))?\}", lambda m: m.group(2) or "", text)
    document: dict[str, Any] = yaml.safe_load(interpolated)
    return document


def test_compose_runs_every_part_with_health_checks() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "vllm", "migrate", "registry", "worker", "proxy"}
    assert services["registry"]["environment"]["REGISTRY_ROLE"] == "api"
    assert services["worker"]["environment"]["REGISTRY_ROLE"] == "worker"
    for name in ("postgres", "redis", "vllm", "registry"):
        assert services[name]["healthcheck"]["test"], name
    assert services["registry"]["deploy"]["replicas"] == 2
    assert services["registry"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["registry"]["command"] == ["serve", "--no-migrate"]
    assert "registry migrate --bootstrap-admin-key 2>>" in services["migrate"]["command"][0]  # key to a file
    assert services["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "--model" in services["vllm"]["command"]


def test_compose_environment_names_real_settings() -> None:
    from registry.settings import Settings

    known = {f"REGISTRY_{name.upper()}" for name in Settings.model_fields}
    for service in compose()["services"].values():
        for variable in service.get("environment", {}):
            if variable.startswith("REGISTRY_"):
                assert variable in known, variable


def test_the_proxy_forwards_to_the_registry_replicas() -> None:
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "server registry:8000" in nginx
    assert "proxy_buffering off" in nginx


BENCH_MODULES = {"__init__.py", "app.py", "common.py"}  # imported by the scripts, not run


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "bench").glob("*.py") if p.name not in BENCH_MODULES))
def test_every_benchmark_script_starts(script: str) -> None:
    """Benchmarks run outside the suite, so at least their imports and arguments are kept working here."""
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_a_benchmark_replaces_only_its_own_section(tmp_path: Path) -> None:
    """Hand-written sections may quote a generated section's title; only the heading line is replaced."""
    from bench.common import write_section

    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Notes\n\nSee `## Speed` below.\n\n## Speed\n\nold\n\n## Memory\n\nkept\n")

    write_section("## Speed", "## Speed\n\nnew\n", path)
    write_section("## Extra", "## Extra\n\nappended\n", path)

    assert path.read_text() == (
        "# Benchmarks\n\n## Notes\n\nSee `## Speed` below.\n\n## Speed\n\nnew\n\n## Memory\n\nkept\n\n"
        "## Extra\n\nappended\n"
    )
