"""Evaluation datasets beside the prompt files: ``datasets/NAME.jsonl``, one item a line.

A file ``prompts/datasets/support/cases.jsonl`` holds the dataset ``support/cases``. Each line is
an item as the API takes it (``{"variables": {...}, "expected": ..., "tags": [...], "metadata":
{...}}``, only ``variables`` needed). Reading, checking and comparing files is pure; ``sync``
pushes them through the API's upload, which makes a new version only when the items differ.

Two files hold the same dataset when their items are equal once the defaults are filled in, so
a file written by hand (other spacing, key order, omitted fields) counts as in sync with the
export of the version it made, and ``export`` leaves it as it is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from registry.lib.schema import NAME_PATTERN
from registry.promptfiles.documents import hidden

FOLDER = "datasets"
SUFFIX = ".jsonl"
ITEM_KEYS = ("variables", "expected", "tags", "metadata")
_NAME = re.compile(NAME_PATTERN)
MAX_NAME = 128  # as the service's names


def dataset_path(name: str, root: Path) -> Path:
    return root / FOLDER / f"{name}{SUFFIX}"


def items_of(raw: bytes, source: str = "") -> tuple[list[dict[str, Any]], list[str]]:
    """The items of a JSONL file with their defaults filled in, and a problem per bad line."""
    items: list[dict[str, Any]] = []
    problems: list[str] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            problems.append(f"{source}: line {number} is not JSON: {exc}")
            continue
        except RecursionError:  # json's answer to nesting past the interpreter's limit
            problems.append(f"{source}: line {number} is not JSON: nested too deep")
            continue
        if not isinstance(item, dict):
            problems.append(f"{source}: line {number} is not a JSON object")
            continue
        unknown = sorted(set(item) - set(ITEM_KEYS))
        if unknown:
            problems.append(f"{source}: line {number} has {', '.join(unknown)}; an item has {', '.join(ITEM_KEYS)}")
            continue
        wrong = _type_problems(item)
        if wrong:
            problems.append(f"{source}: line {number}: {'; '.join(wrong)}")
            continue
        items.append(
            {
                "variables": item.get("variables") or {},
                "expected": item.get("expected"),
                "tags": item.get("tags") or [],
                "metadata": item.get("metadata") or {},
            }
        )
    return items, problems


def _type_problems(item: dict[str, Any]) -> list[str]:
    """What the service's upload would refuse in an item's fields (checked here so that ``--dry-run`` does too)."""
    problems = []
    for key in ("variables", "metadata"):
        if key in item and not isinstance(item[key], dict):
            problems.append(f"{key} must be an object")
    if item.get("expected") is not None and not isinstance(item["expected"], str):
        problems.append("expected must be text or null")
    tags = item.get("tags", [])
    if not (isinstance(tags, list) and all(isinstance(tag, str) for tag in tags)):
        problems.append("tags must be a list of text")
    return problems


def same_items(local: bytes, remote: bytes) -> bool:
    """Whether two JSONL files hold the same items, in the same order."""
    return items_of(local)[0] == items_of(remote)[0]


def load_datasets(root: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """Every dataset file under ``root/datasets`` as (name, file), hidden ones left out (see ``hidden``), and every
    problem found in them."""
    folder = root / FOLDER
    if not folder.is_dir():
        return [], []
    found: list[tuple[str, Path]] = []
    problems: list[str] = []
    for path in sorted(p for p in folder.rglob(f"*{SUFFIX}") if p.is_file() and not hidden(p, folder)):
        if not path.resolve().is_relative_to(root.resolve()):  # a link may not make a sync push a file elsewhere
            problems.append(f"{path}: a link to a file outside {root}, not read")
            continue
        name = path.relative_to(folder).as_posix()[: -len(SUFFIX)]
        if not _NAME.fullmatch(name) or len(name) > MAX_NAME:
            problems.append(f"{path}: '{name}' is not a dataset name ({NAME_PATTERN}, at most {MAX_NAME})")
            continue
        items, bad = items_of(path.read_bytes(), str(path))
        problems += bad
        if not bad and not items:
            problems.append(f"{path}: no items (a dataset version holds at least one)")
        elif not bad:
            found.append((name, path))
    return found, problems
