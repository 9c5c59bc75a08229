"""`registry sync --dry-run` refuses the templates the service would refuse when saved (issue 17 item 5)."""

from __future__ import annotations

from pathlib import Path

from tests.clients.conftest import Live
from tests.promptfiles.test_sync import registry_cli, write


def test_dry_run_refuses_an_unsafe_template_naming_file_line_and_construct(live: Live, tmp_path: Path) -> None:
    write(tmp_path, "greet", "template: Hello {{ name }}!\n")
    write(tmp_path, "leak", 'template: "Hi\\n{{ name.__class__ }}"\n')
    code, out, err = registry_cli(live, "sync", "--dry-run", str(tmp_path))
    assert code != 0
    assert "leak.yaml" in err
    assert "template, line 2: 'name.__class__' reads an internal attribute, which the sandbox refuses" in err
    assert out == "", "nothing is planned while a file is bad"
    listed = live.admin.get("/v1/prompts").json()["items"]
    assert listed == []
