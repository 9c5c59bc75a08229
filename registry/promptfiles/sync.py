"""``registry sync`` and ``registry export``: prompt files to the registry and back, through its API.

A sync changes a prompt only where its file differs: a new version when the
content differs from the newest version (compared by the service's own digest),
a metadata update when description or tags differ, nothing otherwise. So running
it again, or right after ``export``, changes nothing.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prompt_registry_client import NotFound, RegistryClient, RegistryError, encode_name

from registry.promptfiles.documents import PromptDocument, document_of, load_folder, path_of


@dataclass(frozen=True, slots=True)
class Remote:
    """What the registry holds of a prompt: nothing, a prompt without versions, or its newest version."""

    exists: bool
    document: PromptDocument | None = None
    version: int | None = None
    sha256: str | None = None
    labels: dict[str, int | None] | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """What syncing one file does."""

    source: Path
    document: PromptDocument  # as it will be stored: the config pinned to a version
    remote: Remote

    @property
    def new_version(self) -> bool:
        return self.remote.sha256 != self.document.sha256()

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
        if not parts:
            return f"= {name}: unchanged (version {remote.version})"
        return f"~ {name}: {', '.join(parts)}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.document.name,
            "file": str(self.source),
            "exists": self.remote.exists,
            "newest_version": self.remote.version,
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


def remote_of(client: RegistryClient, name: str) -> Remote:
    try:
        resolved = client.request("GET", f"/v1/prompts/{encode_name(name)}", params={"label": "latest"}).json()
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
        labels=resolved["labels"],
    )


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
            yield Change(source, pinned(client, document), remote_of(client, document.name))
        except RegistryError as exc:
            yield document.name, exc


def apply(client: RegistryClient, change: Change, *, message: str, promote_to: str | None) -> list[str]:
    """Make the registry match the file; returns what was done."""
    document, remote, name = change.document, change.remote, change.document.name
    done = []
    path = f"/v1/prompts/{encode_name(name)}"
    metadata = {"description": document.description, "tags": list(document.tags)}
    if not remote.exists:
        client.request("POST", "/v1/prompts", json={"name": name, **metadata})
    elif change.new_metadata:
        client.request("PATCH", path, json=metadata)
        done.append("description and tags updated")
    version = remote.version
    if change.new_version:
        created: dict[str, Any] = client.request("POST", f"{path}/versions", json=document.version_body(message)).json()
        version = int(created["version"])
        done.append(f"version {version} created")
    labels = remote.labels or {}
    if promote_to and version is not None and (change.new_version or labels.get(promote_to) != version):
        client.promote(name, version, promote_to, reason=message)
        done.append(f"version {version} promoted to {promote_to}")
    return done


def export(client: RegistryClient, root: Path, *, prefix: str | None = None) -> Iterator[tuple[str, Path | None]]:
    """Write each prompt's newest version to ``root/<name>.yaml``; yields (name, path or None when it has none)."""
    for item in client.list_resources("prompts", prefix=prefix):
        remote = remote_of(client, item["name"])
        if remote.document is None:
            yield item["name"], None
            continue
        path = path_of(item["name"], root)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(remote.document.to_yaml())
        yield item["name"], path


Echo = Callable[[str], None]


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
) -> bool:
    """Check every file, then sync them one by one; False when anything failed (nothing is written if a file is bad).

    ``as_json`` echoes one JSON object per prompt (what was planned, and ``done``) instead of text.
    """
    files, problems = load_folder(folder)
    for problem in problems:
        echo_error(f"error: {problem}")
    if problems:
        return False
    succeeded = True
    for planned in plan(client, files):
        if isinstance(planned, tuple):
            name, error = planned
            _report(echo_error, name, error)
            succeeded = False
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
            succeeded = False
        if as_json:
            echo(json.dumps({**planned.as_dict(), "done": done}))
        else:
            for line in done:
                echo(f"  {line}")
    return succeeded


def run_export(client: RegistryClient, folder: Path, *, prefix: str | None, echo: Echo, as_json: bool = False) -> None:
    written = 0
    for name, path in export(client, folder, prefix=prefix):
        written += path is not None
        if as_json:
            echo(json.dumps({"prompt": name, "file": str(path) if path else None}))
        elif path is None:
            echo(f"- {name}: no versions yet, not exported")
        else:
            echo(f"{name} -> {path}")
    if not as_json:
        echo(f"exported {written} prompt(s) to {folder}")


def _report(echo_error: Echo, where: str, error: RegistryError) -> None:
    echo_error(f"error: {where}: {error.detail}")
    for problem in error.errors:
        echo_error(f"  {problem.get('field')}: {problem.get('message')}")
