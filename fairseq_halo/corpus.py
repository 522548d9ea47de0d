"""Checks and rewrites of parallel text before binarization: line reading, rare words, reversal.

Lines are read as bytes split on ``b"\\n"`` only, so line numbers match ``wc -l`` and editors.
``fairseq-preprocess`` opens text in universal-newline mode, so it also splits a line on a lone
``\\r``. Its tokenizer turns the other characters in :data:`STRAY_SEPARATORS` into spaces. Such
characters are reported here, or replaced by a space on request, before they shift or merge
sentences. Target tokens are checked against :mod:`fairseq_halo.predpatt`.
"""

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

from . import predpatt

# Characters that Python's str.splitlines treats as line boundaries, other than "\n" itself.
STRAY_SEPARATORS: Dict[str, str] = {
    "\r": "a carriage return (\\r)",
    "\x0b": "a vertical tab (\\x0b)",
    "\x0c": "a form feed (\\x0c)",
    "\x1c": "a file separator (U+001C)",
    "\x1d": "a group separator (U+001D)",
    "\x1e": "a record separator (U+001E)",
    "\x85": "a next-line character (U+0085)",
    "\u2028": "a line separator (U+2028)",
    "\u2029": "a paragraph separator (U+2029)",
}
SEPARATOR_TO_SPACE = str.maketrans({char: " " for char in STRAY_SEPARATORS})

BYTE_ORDER_MARK = "\ufeff"

# fairseq's Dictionary reserves these symbols: a literal "</s>" inside a line would end the
# sentence early, "<pad>" would be masked out. "<unk>" is allowed (pre-processed text uses it).
RESERVED_SYMBOLS = ("<s>", "<pad>", "</s>")

# Problem kinds.
ENCODING = "invalid UTF-8"
SEPARATOR = "stray line separator"
EMPTY = "empty line"
UNTAGGED = "target token without a tag"
RESERVED = "reserved fairseq symbol"
LINE_COUNT = "line count mismatch"


@dataclass(frozen=True)
class Problem:
    """One defect of an input file.

    Attributes:
        file: the file name as the user knows it, e.g. ``train.tgt``.
        line: 1-based line number, or 0 for a defect of the whole file.
        kind: one of the problem kinds of this module, e.g. :data:`EMPTY`.
        message: what is wrong and how to fix it.
    """

    file: str
    line: int
    kind: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


@dataclass
class TextFile:
    """The decoded lines of one file and the defects found while reading it.

    Attributes:
        lines: one string per line, without the ``\\n``; undecodable bytes appear as U+FFFD.
        problems: defects, in line order.
        replaced_separator_lines: 1-based numbers of lines whose stray separators became spaces.
    """

    lines: List[str]
    problems: List[Problem] = field(default_factory=list)
    replaced_separator_lines: List[int] = field(default_factory=list)


def split_lines(data: bytes) -> List[bytes]:
    """Split file contents on ``b"\\n"`` only; a final newline does not start another line."""
    if not data:
        return []
    pieces = data.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()
    return pieces


def decode_line(raw: bytes, name: str, number: int) -> Tuple[str, List[Problem]]:
    """Decode one line as strict UTF-8, reporting the first invalid byte and its column."""
    try:
        return raw.decode("utf-8"), []
    except UnicodeDecodeError as error:
        byte = raw[error.start]
        problem = Problem(
            name, number, ENCODING,
            f"invalid UTF-8: byte 0x{byte:02X} at byte {error.start + 1} of the line; "
            "convert the file to UTF-8 (for Latin-1 text: iconv -f latin1 -t utf-8)",
        )
        return raw.decode("utf-8", errors="replace"), [problem]


def describe_separators(line: str) -> str:
    """Describe the stray separators of a line, e.g. ``a carriage return (\\r) at column 6``."""
    if line.endswith("\r") and not any(char in STRAY_SEPARATORS for char in line[:-1]):
        return "ends in \\r\\n (a Windows line ending); convert the file with dos2unix"
    found = [
        f"{STRAY_SEPARATORS[char]} at column {column}"
        for column, char in enumerate(line, start=1) if char in STRAY_SEPARATORS
    ]
    listed = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    return f"contains {listed}, which fairseq-preprocess splits on or reads as a space; remove it"


def read_text_file(path: Path, replace_separators: bool = False) -> TextFile:
    """Read a text file line by line, checking UTF-8, stray separators, a byte order mark and
    empty lines.

    Args:
        path: the file; its name (e.g. ``train.tgt``) is used in the problems.
        replace_separators: replace every character of :data:`STRAY_SEPARATORS` by a space
            instead of reporting it.
    """
    name = path.name
    result = TextFile(lines=[])
    for number, raw in enumerate(split_lines(path.read_bytes()), start=1):
        line, problems = decode_line(raw, name, number)
        result.problems.extend(problems)

        # A byte order mark would become part of the first token.
        if number == 1 and line.startswith(BYTE_ORDER_MARK):
            result.problems.append(Problem(
                name, number, ENCODING,
                "starts with a UTF-8 byte order mark (U+FEFF); save the file as UTF-8 without it",
            ))

        # Characters that fairseq-preprocess would split on or merge into a space.
        if any(char in STRAY_SEPARATORS for char in line):
            if replace_separators:
                line = line.translate(SEPARATOR_TO_SPACE)
                result.replaced_separator_lines.append(number)
            else:
                result.problems.append(Problem(
                    name, number, SEPARATOR,
                    describe_separators(line) + " or pass --replace-separators",
                ))

        if not line.strip():
            result.problems.append(Problem(
                name, number, EMPTY,
                "is empty; write the sentence or delete this line from both the .src and the "
                ".tgt file",
            ))
        result.lines.append(line)
    return result


def check_tokens(line: str, name: str, number: int, is_target: bool) -> List[Problem]:
    """Report reserved fairseq symbols in a line, and target tokens that fit no tag class."""
    tokens = line.split()
    problems = []
    reserved = sorted({token for token in tokens if token in RESERVED_SYMBOLS})
    if reserved:
        problems.append(Problem(
            name, number, RESERVED,
            f"contains {', '.join(reserved)}, reserved by fairseq's dictionary; remove or "
            "rename it",
        ))
    if is_target:
        untagged = [
            token for token in tokens
            if token not in RESERVED_SYMBOLS and predpatt.token_tag(token) is None
        ]
        if untagged:
            listed = ", ".join(repr(token) for token in untagged[:5])
            more = f" and {len(untagged) - 5} more" if len(untagged) > 5 else ""
            problems.append(Problem(
                name, number, UNTAGGED,
                f"target token(s) {listed}{more} fit no class: a target word must end in :p, "
                ":p_h, :a or :a_h, or be a bracket token or SOMETHING:a=",
            ))
    return problems


def count_target_words(lines: Iterable[str]) -> Counter:
    """Count the target words (not bracket tokens or ``SOMETHING:a=``) of some lines."""
    counts: Counter = Counter()
    for line in lines:
        counts.update(token for token in line.split() if token not in predpatt.STRUCTURE_TOKENS)
    return counts


def replace_rare_words(line: str, counts: Counter, threshold: int) -> Tuple[str, int]:
    """Replace words seen fewer than ``threshold`` times by tag-preserving unknowns.

    Bracket tokens and ``SOMETHING:a=`` are never replaced; ``w7:p`` becomes ``<unk>:p`` and
    ``w9:a_h`` becomes ``<unk>:a_h``. Tokens are joined by single spaces.

    Returns:
        The rewritten line and the number of tokens replaced.
    """
    tokens = []
    replaced = 0
    for token in line.split():
        if token not in predpatt.STRUCTURE_TOKENS and counts[token] < threshold:
            token = predpatt.tag_preserving_unk(token)
            replaced += 1
        tokens.append(token)
    return " ".join(tokens), replaced


def reverse_tokens(line: str) -> str:
    """Reverse the token order of a line; tokens are joined by single spaces."""
    return " ".join(reversed(line.split()))


def malformed_lines(lines: Sequence[str]) -> List[int]:
    """Return the 1-based numbers of target lines whose brackets or heads are not well formed."""
    return [
        number for number, line in enumerate(lines, start=1)
        if line.strip() and not predpatt.is_well_formed(line.split())
    ]
