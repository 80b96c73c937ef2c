"""A deterministic PII/toxicity screen for chunks.

Rules (documented so operators can predict them):
- email addresses;
- payment card numbers: 13-19 digits (spaces/dashes allowed) passing the Luhn check;
- US social security numbers (ddd-dd-dddd, excluding 000/666/9xx areas);
- phone numbers in international form (+ and 8-15 digits);
- a short lexicon of abusive words, matched as whole words, case-insensitive.
A flagged chunk goes to ``ingest-toxic/<tenant>/`` with its reasons instead of
the graph. Precision over recall: no machine-learned model is involved.
"""

from __future__ import annotations

import re

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_SSN = re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")
_PHONE = re.compile(r"(?<![\w+])\+\d(?:[ .-]?\d){7,14}\b")
_ABUSE = re.compile(
    r"\b(?:fuck\w*|shit\w*|bitch\w*|bastard\w*|asshole\w*|cunt\w*|motherfuck\w*|retard(?:ed)?|"
    r"kill\s+yourself|go\s+die)\b",
    re.IGNORECASE,
)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def screen_text(text: str) -> list[str]:
    """Reasons why ``text`` must not enter the graph; empty when it may."""
    reasons = []
    if _EMAIL.search(text):
        reasons.append("pii:email")
    for match in _CARD.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19 and _luhn_ok(digits):
            reasons.append("pii:payment_card")
            break
    if _SSN.search(text):
        reasons.append("pii:ssn")
    if _PHONE.search(text):
        reasons.append("pii:phone")
    if _ABUSE.search(text):
        reasons.append("toxic:abusive_language")
    return reasons
