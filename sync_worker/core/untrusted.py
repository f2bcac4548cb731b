"""What the worker takes of the values services send: text the state file can keep, and
numbers of a sane length."""

from __future__ import annotations

from typing import TypeGuard

# No id, count or size the APIs send is longer; Python's int limit (4300 digits) would
# otherwise refuse a whole answer for one long number.
MAX_INT_DIGITS = 32


def storable(value: object) -> TypeGuard[str]:
    """Whether ``value`` is text the state file can keep: JSON may escape half a UTF-16
    pair (``"\\udc80"``), which Python reads as a lone surrogate that no UTF-8 encodes."""
    if not isinstance(value, str):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True
