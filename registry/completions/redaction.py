"""Redaction of personal data from texts before they are stored.

Pure functions. Each finding is replaced by a marker (``[EMAIL]``, ``[CARD]``,
...). Card numbers must pass the Luhn check and IBANs the mod-97 check, so
order numbers and other digit runs are left alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# The local part is at most 64 characters (RFC 5321): unbounded, a search tried every start of a long run of
# such characters to its end, so a caller's text of a million letters took minutes (quadratic) to redact.
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_SSN = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?![\w-])"
    r"|(?<![\w+])\+\d{7,15}(?!\w)"
)
_IPV4 = re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def _card(match: re.Match[str]) -> str:
    digits = _digits(match.group())
    return "[CARD]" if 13 <= len(digits) <= 19 and luhn_valid(digits) else match.group()


def _iban(match: re.Match[str]) -> str:
    return "[IBAN]" if iban_valid(match.group()) else match.group()


def _phone(match: re.Match[str]) -> str:
    text = match.group()
    digits = _digits(text)
    looks_like_phone = text.startswith(("+", "(")) or len(digits) >= 10
    return "[PHONE]" if 7 <= len(digits) <= 15 and looks_like_phone else text


_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (_EMAIL, lambda _: "[EMAIL]"),
    (_IBAN, _iban),
    (_CARD, _card),
    (_SSN, lambda _: "[SSN]"),
    (_IPV4, lambda _: "[IP]"),
    (_PHONE, _phone),
]


def redact(text: str) -> str:
    """``text`` with emails, IBANs, card numbers, US SSNs, IPv4 addresses and phone numbers masked."""
    for pattern, replace in _RULES:
        text = pattern.sub(replace, text)
    return text
