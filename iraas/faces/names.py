"""Names of enrolled people: one spelling per person, and none that passes for another's.

A name is NFC-normalised, 1-64 characters, starts with a letter or digit and holds only
letters, digits, spaces and . ' - _ ; its letters come from one script. A new name whose
look-alike skeleton equals an enrolled name's but whose spelling differs (a Cyrillic "A" in
"Alice" beside the Latin spelling) is refused: it would be recognised, and shown, as someone else.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from ..refusals import InputError

_SHAPE = re.compile(r"[^\W_][\w .'-]{0,63}")
# Cyrillic and Greek letters drawn like Latin ones (the common confusables of Unicode TR 39).
_LOOKS_LATIN = str.maketrans(
    "АВЕЅІЈКМНОРСТХУаеіјорсхуѕԁԛԝΑΒΕΖΗΙΚΜΝΟΡΤΥΧαοριυνκτ",
    "ABESIJKMHOPCTXYaeijopcxysdqwABEZHIKMNOPTYXaopiuvkt",
)


def _script(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return name.split(" ")[0] if ch.isalpha() else ""


def skeleton(name: str) -> str:
    """What a name looks like: case-folded, with look-alike letters mapped to Latin."""
    return unicodedata.normalize("NFKC", name).translate(_LOOKS_LATIN).casefold()


def person_name(raw: str, enrolled: Iterable[str]) -> str:
    """`raw` as the name to enrol under, or InputError (400 bad_name, 409 name_conflict)."""
    name = unicodedata.normalize("NFC", raw).strip()
    if not _SHAPE.fullmatch(name):
        raise InputError(
            400, "bad_name", "a name is 1-64 letters, digits, spaces, . ' - or _, starting with a letter or digit"
        )
    scripts = {s for s in map(_script, name) if s}
    if len(scripts) > 1:
        raise InputError(400, "bad_name", f"a name's letters come from one script, not {', '.join(sorted(scripts))}")
    shape = skeleton(name)
    for other in enrolled:
        if other != name and skeleton(other) == shape:
            raise InputError(409, "name_conflict", f"{name!r} looks like the enrolled {other!r}: use that spelling")
    return name
