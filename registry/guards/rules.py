"""The deterministic guards' detectors: pure functions from a text to what they find in it.

Each finding is a span of the text, the detector's kind (``email``, ``pattern:0``,
``ignore_instructions``, ``closes_tag``...) and what redaction puts in its place. Nothing
here reads the network or the clock, so the same text always gives the same findings;
``tests/guards/cases/rules.json`` pins them.

- ``deny_patterns``: the guard's regular expressions (case-insensitive), each search cut off after
  ``PATTERN_TIMEOUT_SECONDS`` (the one exception to "the same findings": see ``deny_findings``);
- ``pii``: the personal data that stored texts are redacted of (``registry.completions.redaction``);
- ``injection``: known phrasings that try to override the prompt's instructions;
- ``delimiters``: a variable that brings its own role markers (``<|im_start|>``, ``### System:``,
  ``[INST]``...) or closes the quotes, code fence or tag that the template put around it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import regex

from registry.completions.redaction import _RULES as PII_RULES

PII_KINDS = ("email", "iban", "card", "ssn", "ip", "phone")
# A deny pattern runs over a caller's text on the request path. One that backtracks without end on some text
# (``(a|aa)+$`` against a long run of "a" and a stop) would hold the event loop, and every request with it, for
# minutes: each search is cut off after this long (``regex``'s time limit, as the evaluations' regex scorer has).
PATTERN_TIMEOUT_SECONDS = 0.1
DETERMINISTIC_KINDS = ("deny_patterns", "pii", "injection", "delimiters")


@dataclass(frozen=True, slots=True)
class Finding:
    start: int
    end: int
    kind: str
    replacement: str


def _phrases(*parts: str) -> re.Pattern[str]:
    return re.compile("".join(parts), re.IGNORECASE)


# Known phrasings of prompt injection, by name. Word gaps are any whitespace, so line breaks do not hide them.
INJECTION_PHRASES: dict[str, re.Pattern[str]] = {
    "ignore_instructions": _phrases(
        r"\b(?:ignore|disregard|forget|override|bypass)\s+(?:(?:all|any|the|your|my|these|those|of)\s+)*",
        r"(?:previous|prior|above|earlier|preceding|system|original|all)\s+",
        r"(?:instructions?|prompts?|rules|directions|guidelines|messages|context)\b",
    ),
    "reveal_prompt": _phrases(
        r"\b(?:reveal|show|print|repeat|output|leak|tell\s+me)\s+(?:me\s+)?(?:your|the)\s+",
        r"(?:system\s+prompt|initial\s+(?:prompt|instructions)|hidden\s+instructions|instructions\s+above)",
    ),
    "persona_override": _phrases(
        r"\byou\s+are\s+now\s+(?:DAN\b|in\s+developer\s+mode|an?\s+unrestricted|jailbroken|free\s+from)",
        r"|\bdo\s+anything\s+now\b|\b(?:developer|jailbreak|god)\s+mode\s+(?:enabled|on|activated)\b",
    ),
    "new_instructions": _phrases(r"(?:^|\n)[ \t]*(?:new|updated|real|actual)\s+instructions\s*:"),
    "no_restrictions": _phrases(
        r"\b(?:pretend|act\s+as|behave\s+as)\b[^.\n]{0,80}?",
        r"\b(?:no|without)\s+(?:any\s+)?(?:restrictions|rules|filters|limits|guidelines)\b",
    ),
}

# Role markers of chat templates and instruction formats: in a variable they start a turn of their own.
ROLE_MARKERS: dict[str, re.Pattern[str]] = {
    "special_token": re.compile(
        r"<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id|"
        r"begin_of_text|end_of_text)\|>",
        re.IGNORECASE,
    ),
    "inst_marker": re.compile(r"\[/?INST\]|<</?SYS>>|</s>", re.IGNORECASE),
    "heading_role": re.compile(
        r"(?:^|\n)[ \t]*#{2,}[ \t]*(?:system|instructions?|assistant|user|response)\b[ \t]*:?", re.IGNORECASE
    ),
    "line_role": re.compile(r"(?:^|\n)[ \t]*(?:system|assistant)[ \t]*:", re.IGNORECASE),
}

_TAG = re.compile(r"<(/?)([A-Za-z][\w:.-]{0,63})(?:\s[^<>]*)?>")
_QUOTES = ('"""', "'''", "```", '"', "'", "`")


def deny_findings(text: str, patterns: Sequence[regex.Pattern[str]]) -> list[Finding]:
    """The spans the patterns match. A pattern that cannot finish within ``PATTERN_TIMEOUT_SECONDS`` on ``text``
    finds all of it: the guard fails closed (blocks, flags or redacts as it would a match) rather than letting a
    text past, or the request wait, on a pattern that cannot decide."""
    found: list[Finding] = []
    for i, pattern in enumerate(patterns):
        try:
            matches = [m.span() for m in pattern.finditer(text, timeout=PATTERN_TIMEOUT_SECONDS)]
        except TimeoutError:
            matches = [(0, len(text))]
        found += [Finding(start, end, f"pattern:{i}", "[BLOCKED]") for start, end in matches if end > start]
    return found


def pii_findings(text: str, detectors: Collection[str] = PII_KINDS) -> list[Finding]:
    """The spans ``redact`` would mask, with the marker it would put there; only of ``detectors``."""
    found: list[Finding] = []
    for pattern, replace in PII_RULES:
        for match in pattern.finditer(text):
            marker = replace(match)
            kind = marker.strip("[]").lower()
            if marker != match.group() and kind in detectors:
                found.append(Finding(match.start(), match.end(), kind, marker))
    return _without_overlaps(found)


def injection_findings(text: str) -> list[Finding]:
    return [
        Finding(m.start(), m.end(), name, "[REMOVED]")
        for name, pattern in INJECTION_PHRASES.items()
        for m in pattern.finditer(text)
    ]


def role_marker_findings(text: str) -> list[Finding]:
    return [
        Finding(m.start(), m.end(), name, "[REMOVED]")
        for name, pattern in ROLE_MARKERS.items()
        for m in pattern.finditer(text)
    ]


def _open_tags(before: str) -> list[str]:
    """Tags opened in ``before`` and not closed there, innermost last."""
    stack: list[str] = []
    for match in _TAG.finditer(before):
        closing, name = match.group(1), match.group(2).lower()
        if not closing:
            if not match.group().endswith("/>"):
                stack.append(name)
        elif name in stack:
            del stack[len(stack) - 1 - stack[::-1].index(name) :]
    return stack


def delimiter_escapes(value: str, rendered: str | None = None) -> list[Finding]:
    """Role markers in a variable's ``value``, and what in it closes the template's delimiters around it.

    ``rendered`` is the prompt as rendered with the value in it: the tags open before the value and
    closed after it, and a quote, triple quote or code fence right around it, are the delimiters
    the value must not close. Spans are of ``value``.
    """
    found = role_marker_findings(value)
    if not rendered or not value:
        return _without_overlaps(found)
    at = rendered.find(value)
    if at < 0:
        return _without_overlaps(found)
    before, after = rendered[:at], rendered[at + len(value) :]
    lowered_after = after.lower()
    for tag in _open_tags(before):
        if f"</{tag}" in lowered_after:
            closing = re.compile(rf"</\s*{re.escape(tag)}\s*>", re.IGNORECASE)
            found += [Finding(m.start(), m.end(), "closes_tag", "[REMOVED]") for m in closing.finditer(value)]
    for quote in _QUOTES:
        inside_fence = quote == "```" and before.count("```") % 2 == 1 and "```" in after
        around = before.endswith(quote) and after.startswith(quote)
        if around or inside_fence:
            found += [
                Finding(m.start(), m.end(), "closes_quote", "[REMOVED]") for m in re.finditer(re.escape(quote), value)
            ]
            break  # the longest delimiter around the value is the one it sits in
    return _without_overlaps(found)


def _without_overlaps(findings: Sequence[Finding]) -> list[Finding]:
    """In text order; of overlapping findings the earlier (then the longer) one stays."""
    kept: list[Finding] = []
    for finding in sorted(findings, key=lambda f: (f.start, -f.end)):
        if not kept or finding.start >= kept[-1].end:
            kept.append(finding)
    return kept


def merged(findings: Sequence[Finding]) -> list[Finding]:
    return _without_overlaps(findings)


def redacted(text: str, findings: Sequence[Finding]) -> str:
    """``text`` with each finding replaced by its marker."""
    parts: list[str] = []
    position = 0
    for finding in _without_overlaps(findings):
        parts += [text[position : finding.start], finding.replacement]
        position = finding.end
    parts.append(text[position:])
    return "".join(parts)


def compile_patterns(patterns: Sequence[str]) -> list[regex.Pattern[str]]:
    return [regex.compile(pattern, regex.IGNORECASE) for pattern in patterns]


def find(kind: str, text: str, options: Mapping[str, Any] | None = None) -> list[Finding]:
    """What the detector ``kind`` finds in ``text``; ``options``: ``patterns``, ``detectors``, ``rendered``."""
    options = options or {}
    if kind == "deny_patterns":
        return merged(deny_findings(text, compile_patterns(options.get("patterns", []))))
    if kind == "pii":
        return pii_findings(text, options.get("detectors") or PII_KINDS)
    if kind == "injection":
        return merged(injection_findings(text))
    if kind == "delimiters":
        return delimiter_escapes(text, options.get("rendered"))
    raise ValueError(f"not a deterministic guard kind: {kind}")
