"""Text that others control (file names, zip members, DICOM values), made safe to show.

A name may hold terminal escape sequences (that hide or rewrite the lines around it on a
staff terminal), newlines (that write lines of their own into a notice), bidirectional
controls (that show "report‮fdp.exe" as "reportexe.pdf"), or bytes that are no UTF-8 at all.
Such characters are shown escaped, never dropped, so what staff read is what is there.
"""

from __future__ import annotations

import unicodedata

# Characters of a sender's DICOM value kept to be shown: more than any valid one holds (a person's
# name, the longest: 3 x 64 and two "="), a line's worth, and never a megabyte to escape.
TEXT_LIMIT = 200
# Bidirectional formatting characters: Unicode's category Cf holds them with others.
_SHOWN_AS_IS = {"\t"}


def _safe(character: str) -> bool:
    if character in _SHOWN_AS_IS:
        return False  # a tab moves columns: escaped as well
    category = unicodedata.category(character)
    # Cc: controls (C0, DEL, C1); Cf: format (bidi, zero width); Cs: surrogates (bytes that
    # were not UTF-8, as os.listdir hands them over); Zl, Zp: line and paragraph separators.
    return category not in ("Cc", "Cf", "Cs", "Zl", "Zp", "Co", "Cn")


def _escaped(character: str) -> str:
    code = ord(character)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(character, f"\\x{code:02x}")
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: object, backslashes: bool = True) -> str:
    """`text` with every control, format and separator character escaped (`\\x1b`, `\\n`,
    `\\u202e`), and backslashes doubled, so the escaped form cannot be mistaken for a name."""
    text = str(text)
    if text.isprintable() and (not backslashes or "\\" not in text):
        return text  # the common case, quickly
    return "".join(
        "\\\\" if backslashes and character == "\\" else character if _safe(character) else _escaped(character)
        for character in text
    )


def cut(value: object) -> str:
    """A sender's DICOM value as it is kept to be shown: its first TEXT_LIMIT characters."""
    return str(value)[:TEXT_LIMIT]


def printable_lines(text: object) -> str:
    """A message of our own, of several lines, as it is shown: any control character left in a
    line escaped, line breaks and tabs (columns) kept. (What others named went in made
    `printable` already.)"""
    return "\n".join(
        "\t".join(printable(part, backslashes=False) for part in line.split("\t")) for line in str(text).split("\n")
    )


def shown_in_template(value: object) -> object:
    """jinja2's `finalize` for every value a template prints (messages, package pages, the web
    page): text made printable; markup a template built itself, numbers and the like as they are."""
    if isinstance(value, str) and not hasattr(value, "__html__"):
        return printable(value)
    return value
