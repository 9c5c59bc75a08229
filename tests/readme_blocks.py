"""README.md's shell blocks, read in document order and run one after another as a reader types them.

A block is a fenced ``bash``, ``sh`` or ``shell`` block (typed as it is) or a ``console`` block (the lines
after ``$ `` are typed; the others are what the terminal printed, and must be exactly what the commands
print, stdout and stderr together). A marker on the line right before a block changes what happens to it:

- ``<!-- readme-test: skip (reason) -->``: not run (a server the test starts itself, a local vLLM...).
- ``<!-- readme-test: exit N -->``: run, and expected to end with exit status N (an example of an error).
- ``<!-- readme-test: file PATH -->``: any block (YAML, JSON, text) written to PATH before the next block runs,
  as a reader saves the file the README shows.

Every block runs in its own ``bash -e -o pipefail``, in one working directory, with the variables and the
directory the blocks before it left behind, as in one terminal. ``curl`` fails there on an HTTP error
(``--fail-with-body``, so the problem document is still printed) and on ``207 Multi-Status`` (events of
which some were rejected), since ``curl -s`` alone would exit 0 after any answer.
"""

from __future__ import annotations

import difflib
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Block", "Failure", "MarkerError", "parse", "run_blocks"]

SHELL_LANGUAGES = frozenset({"bash", "sh", "shell", "console"})
FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
MARKER = re.compile(r"^<!--\s*readme-test:(?P<body>.*?)-->\s*$")
SKIP = re.compile(r"^skip \((?P<reason>[^()]*\S[^()]*)\)$")
EXIT = re.compile(r"^exit (?P<status>[0-9]{1,3})$")
FILE = re.compile(r"^file (?P<path>[\w./-]+)$")


class MarkerError(ValueError):
    """A ``readme-test`` marker that says nothing this module understands, or is not right before a block."""


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, counted from 1
    language: str
    text: str
    skip: str | None = None  # the reason
    exit_status: int = 0
    file: str | None = None

    @property
    def runs(self) -> bool:
        return self.language in SHELL_LANGUAGES and self.skip is None and self.file is None

    def script(self) -> str:
        """What is typed: the block, or a console block's commands."""
        return self.text if self.language != "console" else "".join(self._console()[0])

    def printed(self) -> str:
        """What a console block shows the terminal printed (its lines that are not commands)."""
        return "".join(self._console()[1])

    def _console(self) -> tuple[list[str], list[str]]:
        typed: list[str] = []
        printed: list[str] = []
        continued = False
        for line in self.text.splitlines(keepends=True):
            if continued:
                typed.append(line)
            elif line.startswith("$ "):
                typed.append(line[2:])
            else:
                printed.append(line)
                continue
            continued = line.rstrip("\n").endswith("\\")
        return typed, printed


def _marker(body: str, line: int) -> dict[str, str | int]:
    body = body.strip()
    if match := SKIP.match(body):
        return {"skip": match["reason"].strip()}
    if match := EXIT.match(body):
        return {"exit_status": int(match["status"])}
    if match := FILE.match(body):
        return {"file": match["path"]}
    raise MarkerError(f"README.md:{line}: readme-test marker {body!r} is not 'skip (reason)', 'exit N' or 'file PATH'")


def _closes(line: str, opening: str) -> bool:
    """Whether ``line`` ends a block opened by ``opening`` (the same character, at least as many, nothing else)."""
    stripped = line.rstrip()
    return stripped.startswith(opening) and not stripped.strip(opening[0])


def parse(text: str) -> list[Block]:
    """Every fenced block of ``text``, with the marker on the line before it."""
    lines = text.splitlines()
    blocks: list[Block] = []
    pending: tuple[int, dict[str, str | int]] | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        if marker := MARKER.match(line):
            pending = (index + 1, _marker(marker["body"], index + 1))
            index += 1
            continue
        fence = FENCE.match(line)
        if fence is None:
            if pending is not None:
                raise MarkerError(f"README.md:{pending[0]}: a readme-test marker must be right before a block")
            index += 1
            continue
        opening, info = fence["fence"], fence["info"].strip()
        end = index + 1
        while end < len(lines) and not _closes(lines[end], opening):
            end += 1
        options = pending[1] if pending is not None else {}
        blocks.append(
            Block(
                line=index + 1,
                language=info.split()[0].lower() if info else "",
                text="\n".join(lines[index + 1 : end]) + "\n",
                **options,  # type: ignore[arg-type]
            )
        )
        pending = None
        index = end + 1
    if pending is not None:
        raise MarkerError(f"README.md:{pending[0]}: a readme-test marker must be right before a block")
    return blocks


@dataclass(frozen=True)
class Failure:
    block: Block
    status: int
    stdout: str
    stderr: str
    printed_differs: str = ""  # a console block's output against what the README shows, as a diff

    def __str__(self) -> str:
        where = f"README.md:{self.block.line}: the {self.block.language} block"
        if self.printed_differs:
            return f"{where} printed other lines than the README shows (- README, + printed):\n{self.printed_differs}"
        expected = f" (expected {self.block.exit_status})" if self.block.exit_status else ""
        return (
            f"{where} exited with status {self.status}{expected}\n"
            f"--- block ---\n{self.block.script()}"
            f"--- stdout ---\n{_ended(self.stdout)}"
            f"--- stderr ---\n{_ended(self.stderr)}"
        )


# Run before each block: the state the blocks before it left, and curl failing on what a reader sees as an error.
PROLOGUE = r"""
__readme_known=" $(compgen -v | tr '\n' ' ') "
source "$README_TEST_STATE"
__readme_headers="$README_TEST_STATE.headers"
curl() {
    command curl --fail-with-body --dump-header "$__readme_headers" "$@" || return
    if grep -qE '^HTTP/[0-9.]+ 207' "$__readme_headers"; then
        echo "curl: (22) 207 Multi-Status: some items were refused" >&2
        return 22
    fi
}
"""

# Run after each block that succeeded: what it set, for the next one.
EPILOGUE = r"""
{
    for __readme_var in $(compgen -v); do
        case "$__readme_var" in __readme_* | BASH* | FUNCNAME | PIPESTATUS | _) continue ;; esac
        # Variables from the environment count only when changed (PATH, by activating a virtualenv).
        if [[ $__readme_var != PATH && $__readme_var != VIRTUAL_ENV && $__readme_known == *" $__readme_var "* ]]; then
            continue
        fi
        declare -p "$__readme_var"
    done
    printf 'cd %q\n' "$PWD"
} > "$README_TEST_STATE"
"""


def run_blocks(
    blocks: list[Block],
    *,
    cwd: Path,
    env: dict[str, str],
    replacements: dict[str, str],
    timeout: float = 60.0,
) -> Failure | None:
    """Run the blocks in order (writing the file blocks); the first that ends otherwise than expected, or None.

    ``replacements`` stand in for what a reader fills in (the API key ``make run`` printed, the address).
    The environment's exported variables count as already there; variables a block sets reach later blocks.
    """
    with tempfile.TemporaryDirectory(prefix="readme-test-") as folder:
        state = Path(folder) / "state"
        state.write_text(f"cd {shlex.quote(str(cwd))}\n")
        for block in blocks:
            if block.skip is not None:
                continue
            if block.file is not None:
                target = cwd / block.file
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(_filled(block.text, replacements))
            elif block.language in SHELL_LANGUAGES and (failure := _run(block, replacements, cwd, env, state, timeout)):
                return failure
    return None


def _filled(text: str, replacements: dict[str, str]) -> str:
    for placeholder, value in replacements.items():
        text = text.replace(placeholder, value)
    return text


def _run(
    block: Block, replacements: dict[str, str], cwd: Path, env: dict[str, str], state: Path, timeout: float
) -> Failure | None:
    # A console block's output is compared with the README's, as one terminal shows both streams.
    merged = "exec 2>&1\n" if block.language == "console" else ""
    command = [
        "bash",
        "-e",
        "-o",
        "pipefail",
        "-c",
        f"{PROLOGUE}\n{merged}{_filled(block.script(), replacements)}\n{EPILOGUE}",
    ]
    try:
        ran = subprocess.run(
            command,
            cwd=cwd,
            env={**env, "README_TEST_STATE": str(state)},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        out, err = (_text(stream) for stream in (expired.stdout, expired.stderr))
        return Failure(block, -1, out, f"{err}(still running after {timeout:g} s, stopped)\n")
    if ran.returncode != block.exit_status:
        return Failure(block, ran.returncode, ran.stdout, ran.stderr)
    if block.language == "console" and ran.stdout != (shown := _filled(block.printed(), replacements)):
        differs = difflib.unified_diff(shown.splitlines(keepends=True), ran.stdout.splitlines(keepends=True), n=2)
        return Failure(block, ran.returncode, ran.stdout, ran.stderr, "".join(list(differs)[2:]))
    return None


def _ended(text: str) -> str:
    return text if not text or text.endswith("\n") else f"{text}\n"


def _text(stream: str | bytes | None) -> str:
    if isinstance(stream, bytes):
        return stream.decode(errors="replace")
    return stream or ""
