"""``registry export`` never writes one prompt over the file that holds another (its ``name:`` says so)."""

from __future__ import annotations

from pathlib import Path

from tests.clients.conftest import Live, text
from tests.promptfiles.test_sync import registry_cli, write


def test_a_prompt_whose_file_holds_another_prompt_is_refused_not_written_over(live: Live, tmp_path: Path) -> None:
    live.prompt("a", text("I am a"), production=1)
    live.prompt("b", text("I am b"), production=1)
    held = write(tmp_path, "a", "name: b\n# b lives in a.yaml\ntemplate: I am b, edited\n")
    code, out, err = registry_cli(live, "export", str(tmp_path))
    assert code == 1
    assert "error: prompt 'a': not exported" in err
    assert held.read_text() == "name: b\n# b lives in a.yaml\ntemplate: I am b\n", "b's file keeps b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.yaml"]
    code, out, err = registry_cli(live, "sync", "--dry-run", str(tmp_path))
    assert (code, err) == (0, "")
    assert out.startswith("= b: unchanged")
