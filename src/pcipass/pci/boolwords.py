"""Nova's booleans in tag values: oslo's ``bool_from_string`` word lists, in one place.

Device specs and aliases both read tags such as ``trusted`` or ``remote_managed`` this way;
a value that is neither a true nor a false word is for the caller to refuse or to treat as
false (Nova's lenient reading).
"""

from __future__ import annotations

__all__ = ["FALSE_WORDS", "TRUE_WORDS", "bool_word"]

TRUE_WORDS = frozenset({"1", "t", "true", "on", "y", "yes"})
FALSE_WORDS = frozenset({"0", "f", "false", "off", "n", "no"})


def bool_word(text: str) -> bool | None:
    """True or False for one of the words (any case, surrounding space ignored), else None."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None
