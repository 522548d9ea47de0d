"""The linearized PredPatt format: token tags, bracket tokens, heads, parsing and well-formedness.

This is the one module that defines the spelling of the format. A linearized sequence is a
whitespace-separated list of tokens: ``word:p`` / ``word:p_h`` are predicate words (``_h`` marks
the head), ``word:a`` / ``word:a_h`` argument words, ``^(((`` ... ``)))$`` encloses a predicate,
``^(((:a`` ... ``)))$:a`` a predicate that is itself an argument of the predicate around it,
``^((`` ... ``))$`` an argument, and ``SOMETHING:a=`` stands before a clausal argument. The format
follows the PredPatt linearization of the ``decomp`` toolkit (Zhang et al. 2017).
"""

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

PREDICATE = "predicate"
ARGUMENT = "argument"

PRED_OPEN = "^((("
PRED_CLOSE = ")))$"
ARG_PRED_OPEN = "^(((:a"
ARG_PRED_CLOSE = ")))$:a"
ARG_OPEN = "^(("
ARG_CLOSE = "))$"
CLAUSAL_ARG = "SOMETHING:a="

PREDICATE_BRACKETS = frozenset({PRED_OPEN, PRED_CLOSE, ARG_PRED_OPEN, ARG_PRED_CLOSE})
ARGUMENT_BRACKETS = frozenset({ARG_OPEN, ARG_CLOSE})
OPEN_TO_CLOSE = {PRED_OPEN: PRED_CLOSE, ARG_PRED_OPEN: ARG_PRED_CLOSE, ARG_OPEN: ARG_CLOSE}
CLOSE_TO_OPEN = {close: open_ for open_, close in OPEN_TO_CLOSE.items()}
STRUCTURE_TOKENS = PREDICATE_BRACKETS | ARGUMENT_BRACKETS | {CLAUSAL_ARG}

PREDICATE_SUFFIXES = ("p", "p_h")
ARGUMENT_SUFFIXES = ("a", "a_h")
HEAD_SUFFIXES = ("p_h", "a_h")


def split_word(token: str):
    """Split ``word:suffix`` at its last colon.

    Returns:
        ``(word, suffix)``; ``suffix`` is None when the token has no colon. Words that contain
        colons themselves (``10:30:a``, URLs) keep them: only the last colon separates.
    """
    word, sep, suffix = token.rpartition(":")
    if not sep:
        return token, None
    return word, suffix


def token_tag(token: str) -> Optional[str]:
    """Return the tag of a target token: ``PREDICATE``, ``ARGUMENT`` or None.

    Predicate brackets are predicate tokens, including ``^(((:a`` and ``)))$:a``, which end in
    ``:a``. Argument brackets and ``SOMETHING:a=`` are argument tokens. Words follow the suffix
    after their last colon (``:p``/``:p_h`` or ``:a``/``:a_h``). Anything else has no tag.
    """
    if token in PREDICATE_BRACKETS:
        return PREDICATE
    if token in ARGUMENT_BRACKETS or token == CLAUSAL_ARG:
        return ARGUMENT
    _, suffix = split_word(token)
    if suffix in PREDICATE_SUFFIXES:
        return PREDICATE
    if suffix in ARGUMENT_SUFFIXES:
        return ARGUMENT
    return None


def word_tag(token: str) -> Optional[str]:
    """Return the tag of a token if it is a word (not a bracket or ``SOMETHING:a=``), else None."""
    if token in STRUCTURE_TOKENS:
        return None
    return token_tag(token)


def is_head(token: str) -> bool:
    """Return whether a word token is the head of its predicate or argument (``:p_h`` or ``:a_h``)."""
    return token not in STRUCTURE_TOKENS and split_word(token)[1] in HEAD_SUFFIXES


def strip_suffix(token: str) -> str:
    """Return the word of a tagged token without its ``:p``/``:a``/``_h`` suffix."""
    word, suffix = split_word(token)
    if suffix in PREDICATE_SUFFIXES or suffix in ARGUMENT_SUFFIXES:
        return word
    return token


def tag_preserving_unk(token: str, unk: str = "<unk>") -> str:
    """Return the unknown-word token that keeps a word's tag and head mark, e.g. ``<unk>:a_h``.

    Tokens without a tag suffix map to the plain ``unk``.
    """
    _, suffix = split_word(token)
    if suffix in PREDICATE_SUFFIXES or suffix in ARGUMENT_SUFFIXES:
        return f"{unk}:{suffix}"
    return unk


@dataclass
class Span:
    """One bracketed predicate or argument of a parsed sequence.

    Attributes:
        kind: ``PREDICATE`` for ``^(((``/``^(((:a`` brackets, ``ARGUMENT`` for ``^((``.
        words: tokens directly inside this bracket (not inside nested brackets), suffixes kept.
        children: spans nested directly inside.
    """

    kind: str
    open_token: str
    words: List[str] = field(default_factory=list)
    children: List["Span"] = field(default_factory=list)

    def heads(self) -> List[str]:
        return [w for w in self.words if is_head(w)]


class MalformedSequence(ValueError):
    """Raised by :func:`parse` when brackets are unbalanced or wrongly nested."""


def parse(tokens: Sequence[str]) -> List[Span]:
    """Parse a linearized sequence into its tree of spans.

    Args:
        tokens: the whitespace-split sequence.

    Returns:
        The top-level spans in order, each span listing its direct words and nested spans.
        Words outside every bracket are attached to no span and ignored.

    Raises:
        MalformedSequence: a closing bracket without its opening one, a closing bracket of the
            wrong kind, or a bracket left open at the end.
    """
    roots: List[Span] = []
    stack: List[Span] = []
    for position, token in enumerate(tokens):
        if token in OPEN_TO_CLOSE:
            kind = ARGUMENT if token == ARG_OPEN else PREDICATE
            span = Span(kind=kind, open_token=token)
            (stack[-1].children if stack else roots).append(span)
            stack.append(span)
        elif token in CLOSE_TO_OPEN:
            if not stack:
                raise MalformedSequence(f"token {position + 1} {token!r} closes no open bracket")
            if OPEN_TO_CLOSE[stack[-1].open_token] != token:
                raise MalformedSequence(
                    f"token {position + 1} {token!r} closes {stack[-1].open_token!r}"
                )
            stack.pop()
        elif stack and token != CLAUSAL_ARG:
            stack[-1].words.append(token)
    if stack:
        raise MalformedSequence(f"{len(stack)} bracket(s) left open at the end")
    return roots


def iter_spans(spans: Sequence[Span]):
    """Yield every span of a parsed tree, parents before children."""
    for span in spans:
        yield span
        yield from iter_spans(span.children)


def is_well_formed(tokens: Sequence[str]) -> bool:
    """Return whether a sequence can be recovered into predicate-argument structure.

    Well formed means balanced and properly nested brackets, and exactly one head word directly
    inside every predicate and every argument bracket (the recoverability criterion of Zhang's
    thesis, 2020).
    """
    try:
        spans = parse(tokens)
    except MalformedSequence:
        return False
    return all(len(span.heads()) == 1 for span in iter_spans(spans))
