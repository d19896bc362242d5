"""Masking the values a message quotes, for what operators list without ``--show-data``.

Field problems quote the rejected value (``attribute 'phone': 'abc' is not a phone number``) and vendors' answers
may name a customer; listed on a terminal (or from a deployed stack's queues) they would show personal data the
operator did not ask for. The masked text keeps what says what to fix: the attribute, the rule, the vendor's
words around the value."""

from __future__ import annotations

import re

MASK = "…"
# a quoted value after a colon: the value a field problem quotes (names before it are not preceded by ': ')
_QUOTED_VALUE = re.compile(r"""(:\s*)(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
_EMAIL = re.compile(r"""[^\s@'"<>(),;:\[\]]+@[^\s@'"<>(),;:\[\]]+\.[A-Za-z]{2,}""")
# a phone number, a customer number or a date: 6 or more digits with separators between them
_DIGITS = re.compile(r"\+?\d(?:[ ()./-]?\d){5,}")


def masked(text: str) -> str:
    """``text`` with quoted values, e-mail addresses and long digit runs replaced by ``…``."""
    text = _QUOTED_VALUE.sub(lambda match: f"{match.group(1)}'{MASK}'", text)
    text = _EMAIL.sub(MASK, text)
    return _DIGITS.sub(MASK, text)
