"""Print (or, with --write, update in README.md) the configuration table generated from Settings."""

from __future__ import annotations

import sys
from pathlib import Path

from registry.settings import Settings

START, END = "<!-- settings:start -->", "<!-- settings:end -->"
README = Path(__file__).resolve().parents[1] / "README.md"


def settings_table() -> str:
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if default == {} or default == []:
            default = None
        shown = "unset" if default is None else f"`{str(default).lower() if isinstance(default, bool) else default}`"
        rows.append(f"| `REGISTRY_{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(rows)


def updated_readme(text: str) -> str:
    before, _, rest = text.partition(START)
    _, _, after = rest.partition(END)
    return f"{before}{START}\n{settings_table()}\n{END}{after}"


if __name__ == "__main__":
    if "--write" in sys.argv:
        README.write_text(updated_readme(README.read_text()))
    else:
        print(settings_table())
