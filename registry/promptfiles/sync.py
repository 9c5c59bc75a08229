"""``registry sync`` and ``registry export``: prompt files to the registry and back, through its API.

A sync changes a prompt only where its file differs: a new version when no
version holds the file's content (compared by the service's own digest; archived
versions do not count), a metadata update when description or tags differ, nothing
otherwise. So running it again, or right after ``export``, changes nothing. The
version a file holds is the newest one with its content: ``--promote`` moves that
one or the one the sync created, never a version made outside the folder.

``export`` writes what a label holds (production unless told otherwise) and
changes a file already in the folder only where it differs (see
``PromptDocument.rewrite``), so exporting a folder that is in sync leaves it
byte for byte as it was.

Evaluation datasets travel with the prompts as ``datasets/NAME.jsonl`` (see ``datasets``):
``sync`` pushes each file through the API's upload before the prompts (the service makes a
version only when the items differ), and ``export`` writes each dataset's latest version,
leaving a file that holds the same items untouched.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from prompt_registry_client import Conflict, NotFound, RegistryClient, RegistryError, encode_name

from registry.cli.output import error_detail, gate_evidence
from registry.promptfiles.datasets import dataset_path, load_datasets, same_items
from registry.promptfiles.documents import PromptDocument, document_of, inside, is_name, load_folder, path_of


@dataclass(frozen=True, slots=True)
class Remote:
    """What the registry holds of a prompt: nothing, a prompt without a version at the label, or that version."""

    exists: bool
    document: PromptDocument | None = None
    version: int | None = None
    sha256: str | None = None
    state: str | None = None
    labels: dict[str, int | None] | None = None


@dataclass(frozen=True, slots=True)
class Held:
    """The version that holds a file's content, and its state."""

    version: int
    state: str


@dataclass(frozen=True, slots=True)
class Change:
    """What syncing one file does."""

    source: Path
    document: PromptDocument  # as it will be stored: the config pinned to a version
    remote: Remote  # the newest version
    held: Held | None = None  # the version with the file's content, when there is one

    @property
    def new_version(self) -> bool:
        return self.held is None

    @property
    def new_metadata(self) -> bool:
        remote = self.remote.document
        if not self.remote.exists:
            return True
        return remote is None or (remote.description, remote.tags) != (self.document.description, self.document.tags)

    @property
    def changed(self) -> bool:
        return self.new_version or self.new_metadata

    def summary(self) -> str:
        name, remote = self.document.name, self.remote
        if not remote.exists:
            return f"+ {name}: new prompt, version 1"
        parts = []
        if self.new_version:
            parts.append(
                f"new version {(remote.version or 0) + 1}"
                + (f" (newest is {remote.version})" if remote.version else "")
            )
        if self.new_metadata:
            parts.append("description and tags")
        held = self.held.version if self.held else None
        if not parts:
            newest = f", newest is {remote.version}" if held != remote.version else ""
            return f"= {name}: unchanged (version {held}{newest})"
        return f"~ {name}: {', '.join(parts)}" + (f" (version {held})" if held else "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.document.name,
            "file": str(self.source),
            "exists": self.remote.exists,
            "newest_version": self.remote.version,
            "version": self.held.version if self.held else None,
            "new_version": self.new_version,
            "new_metadata": self.new_metadata,
        }

    def diff(self) -> str:
        """The change as a unified diff of the two files (what the registry holds, what the folder says)."""
        before = self.remote.document.to_yaml() if self.remote.document is not None else ""
        where = f"{self.document.name}@{self.remote.version}" if self.remote.version else f"{self.document.name} (none)"
        return "".join(
            difflib.unified_diff(
                before.splitlines(keepends=True),
                self.document.to_yaml().splitlines(keepends=True),
                fromfile=f"registry: {where}",
                tofile=str(self.source),
            )
        )


def remote_of(client: RegistryClient, name: str, label: str = "latest") -> Remote:
    try:
        resolved = client.request("GET", f"/v1/prompts/{encode_name(name)}", params={"label": label}).json()
    except NotFound as exc:
        if exc.type == "label_not_set":
            return Remote(exists=True)
        if exc.type == "prompt_not_found":
            return Remote(exists=False)
        raise
    return Remote(
        exists=True,
        document=document_of(resolved),
        version=resolved["version"]["version"],
        sha256=resolved["version"]["sha256"],
        state=resolved["version"]["state"],
        labels=resolved["labels"],
    )


def held_by(client: RegistryClient, document: PromptDocument, newest: Remote) -> Held | None:
    """The newest version with ``document``'s content (``document`` pinned), or None when none has it."""
    if newest.version is None:
        return None
    sha256 = document.sha256()
    if newest.sha256 == sha256 and newest.state is not None:
        return Held(newest.version, newest.state)
    for version in client.list_versions(document.name):
        if version["sha256"] == sha256 and version["state"] != "archived":
            return Held(int(version["version"]), version["state"])
    return None


def pinned(client: RegistryClient, document: PromptDocument) -> PromptDocument:
    """The document with its config label resolved to the version it names now."""
    if document.config is None or document.config.version is not None:
        return document
    params = {"label": document.config.label}
    config = client.request("GET", f"/v1/configs/{encode_name(document.config.name)}", params=params).json()
    return document.with_config_version(int(config["version"]))


def plan(
    client: RegistryClient, files: list[tuple[Path, PromptDocument]]
) -> Iterator[Change | tuple[str, RegistryError]]:
    """One change per file, or the error that kept it from being planned (with the prompt's name)."""
    for source, document in files:
        try:
            document = pinned(client, document)
            remote = remote_of(client, document.name)
            yield Change(source, document, remote, held_by(client, document, remote))
        except RegistryError as exc:
            yield document.name, exc


def apply(client: RegistryClient, change: Change, *, message: str, promote_to: str | None) -> list[str]:
    """Make the registry match the file; returns what was done.

    ``promote_to`` moves the version holding the file's content, the one this sync created or the
    newest one with that content: a version made outside the folder is left where it is.
    """
    document, remote, name = change.document, change.remote, change.document.name
    done = []
    path = f"/v1/prompts/{encode_name(name)}"
    metadata = {"description": document.description, "tags": list(document.tags)}
    if not remote.exists:
        client.request("POST", "/v1/prompts", json={"name": name, **metadata})
    elif change.new_metadata:
        client.request("PATCH", path, json=metadata)
        done.append("description and tags updated")
    held = change.held
    if held is None:
        created: dict[str, Any] = client.request("POST", f"{path}/versions", json=document.version_body(message)).json()
        held = Held(int(created["version"]), created["state"])
        done.append(f"version {held.version} created")
    if promote_to is None or (remote.labels or {}).get(promote_to) == held.version:
        return done
    if promote_to == "staging" and held.state == "production":
        done.append(f"version {held.version} is in production, not moved back to staging")
    else:
        try:
            client.promote(name, held.version, promote_to, reason=message)
        except Conflict:
            # Another sync of the same folder (two merges at once) moved it first: what this one wanted is done.
            if remote_of(client, name, promote_to).version != held.version:
                raise
            done.append(f"version {held.version} already in {promote_to}")
            return done
        done.append(f"version {held.version} promoted to {promote_to}")
    return done


Outcome = Literal["written", "unchanged", "skipped", "refused"]


def export(
    client: RegistryClient, root: Path, *, label: str = "production", prefix: str | None = None
) -> Iterator[tuple[str, Path | None, Outcome]]:
    """Write the version at ``label`` of each prompt to its file; yields (name, file, what happened).

    A prompt already in the folder (as ``root/<name>.yaml`` or a file whose ``name:`` says so) keeps
    its file, changed only where it differs; a config label in it stays a label while it names the
    version this one pins. A prompt with no version at ``label`` is skipped (no file). A name whose file
    would lie outside ``root``, or is a file whose ``name:`` holds another prompt, is refused (no file).
    """
    files, _ = load_folder(root)  # a bad file is written over as a new one
    existing = {document.name: (path, document) for path, document in reversed(files)}
    held = {path: document.name for path, document in files}  # a file whose name: is another prompt's
    for item in client.list_resources("prompts", prefix=prefix):
        name = item["name"]
        claimed = name not in existing and held.get(path_of(name, root), name) != name
        if claimed or not _writable(name, path_of(name, root), root):
            yield name, None, "refused"
            continue
        remote = remote_of(client, name, label)
        if remote.document is None:
            yield name, None, "skipped"
            continue
        if name not in existing:
            path = path_of(name, root)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(remote.document.to_yaml(), encoding="utf-8")
            yield name, path, "written"
            continue
        path, local = existing[name]
        text = path.read_text(encoding="utf-8")
        rewritten = _keeping_label(client, local, remote.document).rewrite(text)
        if rewritten == text:
            yield name, path, "unchanged"
            continue
        path.write_text(rewritten, encoding="utf-8")
        yield name, path, "written"


def _writable(name: Any, path: Path, root: Path) -> bool:
    """Whether an export may write ``name``'s file: the service's names never leave the folder, but the
    answer may come from elsewhere (a proxy, another service at that URL), and a link in the folder may
    lead out of it."""
    return isinstance(name, str) and is_name(name) and inside(path, root)


def _keeping_label(client: RegistryClient, local: PromptDocument, exported: PromptDocument) -> PromptDocument:
    """``exported`` with the file's config label where that label names the version ``exported`` pins."""
    ref, pinned_ref = local.config, exported.config
    if ref is None or ref.label is None or pinned_ref is None or ref.name != pinned_ref.name:
        return exported
    try:
        resolved = pinned(client, local).config
    except RegistryError:
        return exported
    return replace(exported, config=ref) if resolved == pinned_ref else exported


Echo = Callable[[str], None]


@dataclass(slots=True)
class SyncResult:
    """What went wrong in a sync; true when nothing did. ``gate_refused``: a promotion a gate refused."""

    failed: bool = False
    gate_refused: bool = False

    def __bool__(self) -> bool:
        return not self.failed

    def record(self, error: RegistryError) -> None:
        self.failed = True
        self.gate_refused = self.gate_refused or error.type == "gate_failed"


def _remote_dataset(client: RegistryClient, name: str) -> tuple[int | None, bytes | None]:
    """The latest version of dataset ``name`` and its JSONL, or (None, None) when it has none."""
    try:
        with client.export_dataset(name) as chunks:
            content = b"".join(chunks)
        return int(client.get_dataset_version(name)["version"]), content
    except NotFound as exc:
        if exc.type in ("dataset_not_found", "dataset_version_not_found"):
            return None, None
        raise


def sync_dataset(client: RegistryClient, name: str, source: Path, *, dry_run: bool, message: str) -> dict[str, Any]:
    """Push one dataset file (a new version only when its items differ); what was or would be done."""
    content = source.read_bytes()
    if dry_run:
        newest, remote = _remote_dataset(client, name)
        unchanged = remote is not None and same_items(content, remote)
        return {
            "dataset": name,
            "file": str(source),
            "version": newest if unchanged else None,
            "created": False,
            "newest_version": newest,
            "changed": not unchanged,
        }
    version, created = client.push_dataset(name, content, commit_message=message)
    return {
        "dataset": name,
        "file": str(source),
        "version": version["version"],
        "created": created,
        "newest_version": version["version"],
        "changed": created,
        "items": version["item_count"],
    }


def _dataset_summary(outcome: dict[str, Any], dry_run: bool) -> str:
    name, newest = outcome["dataset"], outcome["newest_version"]
    if not outcome["changed"]:
        return f"= dataset {name}: unchanged (version {newest})"
    if dry_run:
        return (
            f"+ dataset {name}: new dataset, version 1"
            if newest is None
            else (f"~ dataset {name}: new version {newest + 1} (newest is {newest})")
        )
    sign = "+" if outcome["version"] == 1 else "~"
    return f"{sign} dataset {name}: version {outcome['version']} created ({outcome['items']} items)"


def run_sync(
    client: RegistryClient,
    folder: Path,
    *,
    dry_run: bool,
    promote_to: str | None,
    message: str,
    echo: Echo,
    echo_error: Echo,
    as_json: bool = False,
) -> SyncResult:
    """Check every file, then sync the datasets and the prompts one by one; false when anything failed
    (nothing is written if a file is bad).

    ``as_json`` echoes one JSON object per dataset and per prompt (what was planned, and ``done``)
    instead of text.
    """
    files, problems = load_folder(folder)
    dataset_files, dataset_problems = load_datasets(folder)
    problems += dataset_problems
    if not files and not dataset_files and not problems:
        problems = [f"{folder}: no prompt files (*.yaml, *.yml) in it, so nothing to sync"]
    for problem in problems:
        echo_error(f"error: {problem}")
    result = SyncResult()
    if problems:
        result.failed = True
        return result
    for name, source in dataset_files:
        try:
            outcome = sync_dataset(client, name, source, dry_run=dry_run, message=message)
        except RegistryError as refused:
            _report(echo_error, f"dataset {name}", refused)
            result.record(refused)
            continue
        echo(json.dumps(outcome) if as_json else _dataset_summary(outcome, dry_run))
    for planned in plan(client, files):
        if isinstance(planned, tuple):
            name, error = planned
            _report(echo_error, name, error)
            result.record(error)
            continue
        if not as_json:
            echo(planned.summary())
        if dry_run and not as_json and planned.changed:
            echo(planned.diff().rstrip("\n"))
        done: list[str] = []
        try:
            done = [] if dry_run else apply(client, planned, message=message, promote_to=promote_to)
        except RegistryError as error:
            _report(echo_error, planned.document.name, error)
            result.record(error)
        if as_json:
            echo(json.dumps({**planned.as_dict(), "done": done}))
        else:
            for line in done:
                echo(f"  {line}")
    return result


def export_datasets(
    client: RegistryClient, root: Path, *, prefix: str | None = None
) -> Iterator[tuple[str, Path | None, Outcome]]:
    """Write the latest version of each dataset to ``root/datasets/NAME.jsonl``; a file that holds the same
    items is left as it is (byte for byte), a dataset without versions is skipped."""
    for dataset in client.list_datasets(prefix=prefix):
        name = dataset["name"]
        if not _writable(name, dataset_path(name, root), root):
            yield name, None, "refused"
            continue
        if not dataset.get("latest_version"):
            yield name, None, "skipped"
            continue
        with client.export_dataset(name) as chunks:
            content = b"".join(chunks)
        path = dataset_path(name, root)
        if path.is_file() and same_items(path.read_bytes(), content):
            yield name, path, "unchanged"
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        yield name, path, "written"


def run_export(
    client: RegistryClient,
    folder: Path,
    *,
    prefix: str | None,
    echo: Echo,
    label: str = "production",
    as_json: bool = False,
    echo_error: Echo | None = None,
) -> bool:
    """Export and say what happened to each prompt; a prompt with nothing at ``label`` is named, not an error.

    Prompts still in development have no production version, so skipping them is what an export
    of production should do; the summary counts them. False when a name was refused (on ``echo_error``):
    one that is not a name, or whose file would lie outside ``folder``.
    """
    counts = {"written": 0, "unchanged": 0, "skipped": 0, "refused": 0}
    for name, path, outcome in export(client, folder, label=label, prefix=prefix):
        counts[outcome] += 1
        _say(echo, "prompt", name, path, outcome, as_json, missing=f"no version in {label}", echo_error=echo_error)
    if not as_json:
        exported = counts["written"] + counts["unchanged"]
        echo(
            f"exported {exported} prompt(s) from {label} to {folder}: {counts['written']} file(s) written, "
            f"{counts['unchanged']} unchanged, {counts['skipped']} prompt(s) with no version in {label}"
        )
    for name, path, outcome in export_datasets(client, folder, prefix=prefix):
        counts[outcome] += 1
        _say(echo, "dataset", name, path, outcome, as_json, missing="no version", echo_error=echo_error)
    return counts["refused"] == 0


def _say(
    echo: Echo,
    kind: str,
    name: str,
    path: Path | None,
    outcome: Outcome,
    as_json: bool,
    missing: str,
    echo_error: Echo | None = None,
) -> None:
    """One exported prompt or dataset: a JSON object, or a line (datasets named as such)."""
    shown = name if kind == "prompt" else f"{kind} {name}"
    if as_json:
        echo(json.dumps({kind: name, "file": str(path) if path else None, "outcome": outcome}))
    elif outcome == "refused":
        (echo_error or echo)(
            f"error: {kind} {name!r}: not exported: not a {kind} name, its file would lie outside the folder, "
            "or that file holds another prompt (its name: field says so)"
        )
    elif path is None:
        echo(f"- {shown}: {missing}, not exported")
    elif outcome == "unchanged":
        echo(f"= {shown}: {path} unchanged")
    else:
        echo(f"{shown} -> {path}")


def _report(echo_error: Echo, where: str, error: RegistryError) -> None:
    echo_error(f"error: {where}: {error_detail(error.status, error.detail)}")
    for problem in error.errors:
        echo_error(f"  {problem.get('field')}: {problem.get('message')}")
    if error.type == "gate_failed":
        for line in gate_evidence(error.body):
            echo_error(f"  {line}")
