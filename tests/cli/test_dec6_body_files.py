"""Files the commands send as a body (``versions create --file``, ``eval run --scorers``) are read strictly:
a key given twice is refused rather than the last one winning unseen, and an alias bomb is refused before
it is expanded to JSON. Nothing is sent, so no registry answers here."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from registry.cli import main


def _create(file: Path) -> tuple[int, str]:
    env = {"REGISTRY_URL": "http://127.0.0.1:9", "REGISTRY_API_KEY": "k"}
    result = CliRunner().invoke(main, ["versions", "create", "dec6-body", "--file", str(file)], env=env)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stderr


def test_duplicate_keys_alias_bombs_and_deep_nesting_are_usage_errors(tmp_path: Path) -> None:
    files = {
        "twice.yaml": "kind: text\ntemplate: reviewed\ntemplate: not reviewed\n",
        "twice.json": '{"kind": "text", "template": "reviewed", "template": "not reviewed"}',
        "bomb.yaml": 'l0: &l0 ["x","x","x","x","x","x","x","x","x","x"]\n'
        + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9)),
        "deep.json": '{"a": ' + "[" * 3000 + "]" * 3000 + "}",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert _create(tmp_path / "twice.yaml") == (
        2,
        f"error: {tmp_path / 'twice.yaml'} is not valid YAML: the key 'template' is given twice\n"
        '  in "<unicode string>", line 1, column 1:\n    kind: text\n    ^\n',
    )
    assert _create(tmp_path / "twice.json") == (
        2,
        f"error: {tmp_path / 'twice.json'} is not valid JSON: the key 'template' is given twice\n",
    )
    code, err = _create(tmp_path / "bomb.yaml")
    assert (code, err) == (
        2,
        f"error: {tmp_path / 'bomb.yaml'} holds more than 100000 values once its aliases (*name) are expanded\n",
    )
    assert _create(tmp_path / "deep.json") == (2, f"error: {tmp_path / 'deep.json'} is nested deeper than 64 levels\n")


def test_a_file_that_is_not_utf8_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    env = {"REGISTRY_URL": "http://127.0.0.1:9", "REGISTRY_API_KEY": "k"}
    template, body = tmp_path / "latin.txt", tmp_path / "latin.json"
    template.write_bytes(b"caf\xe9 {{ x }}\n")
    body.write_bytes(b'{"template": "caf\xe9"}')
    for file, args in (
        (template, ["versions", "create", "dec6-body", "--file", str(template)]),
        (body, ["versions", "create", "dec6-body", "--file", str(body)]),
        (template, ["events", "send", str(template)]),
    ):
        result = CliRunner().invoke(main, args, env=env)
        assert isinstance(result.exception, SystemExit), repr(result.exception)
        assert result.exit_code == 2
        assert result.stderr.startswith(f"error: cannot read {file} as UTF-8 text: ")
