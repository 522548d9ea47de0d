"""Corpus metrics for linearized PredPatt output: BLEU, predicate and argument F1, recoverability.

BLEU follows the semantics of Moses ``multi-bleu.perl`` (cased, whitespace tokens, no smoothing)
and is computed with sacrebleu. F1 is either token-level overlap of predicate and argument words
(Zhang et al., EACL 2017) or mention-level partial credit with greedy Dice pairing (after Liu et
al., "Evaluation Algorithms for Event Nugget Detection: A Pilot Study", EVENTS workshop at
NAACL-HLT 2015). Every function takes sentences as token lists and none reads files.
``docs/metrics.md`` gives a worked example.
"""

from collections import Counter
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from sacrebleu.metrics import BLEU

from . import predpatt

TokenLists = Sequence[Sequence[str]]

# Settings that reproduce multi-bleu.perl: no tokenization beyond splitting on whitespace, case
# kept, a zero n-gram precision gives BLEU 0 (no smoothing), and 1- to 4-grams.
BLEU_SETTINGS = dict(tokenize="none", smooth_method="none", lowercase=False, max_ngram_order=4)


def tokenize(line: str) -> List[str]:
    """Split a linearized sequence on whitespace, as sacrebleu's ``none`` tokenizer does.

    ``str.split()`` splits on every Unicode whitespace character, which is also what sacrebleu
    2.6.0 uses to count n-grams, so BLEU and F1 see the same tokens.
    """
    return line.split()


@dataclass(frozen=True)
class BleuResult:
    """Corpus BLEU with its sufficient statistics.

    Attributes:
        score: BLEU in [0, 100].
        counts: matched n-grams for n = 1..4, clipped by the reference counts.
        totals: hypothesis n-grams for n = 1..4.
        precisions: n-gram precisions in [0, 100].
        brevity_penalty: in [0, 1].
        hypothesis_length: number of hypothesis tokens.
        reference_length: number of reference tokens.
        signature: sacrebleu's reproducibility signature, e.g. ``nrefs:1|case:mixed|...``.
    """

    score: float
    counts: Tuple[int, ...]
    totals: Tuple[int, ...]
    precisions: Tuple[float, ...]
    brevity_penalty: float
    hypothesis_length: int
    reference_length: int
    signature: str


def corpus_bleu(hypotheses: TokenLists, references: TokenLists) -> BleuResult:
    """Compute corpus BLEU over token lists with multi-bleu.perl semantics.

    Brackets, ``SOMETHING:a=`` and tag suffixes are ordinary tokens, so ``w5:p`` against
    ``w5:a`` is a mismatch. sacrebleu's default 13a tokenizer would split ``w5:p`` into
    ``w5 : p`` and give credit for the word alone.

    Args:
        hypotheses: one token list per sentence.
        references: one token list per sentence, same order and length.

    Raises:
        ValueError: the two lists differ in length.
    """
    _check_lengths(hypotheses, references)
    bleu = BLEU(force=True, **BLEU_SETTINGS)
    result = bleu.corpus_score(
        [" ".join(tokens) for tokens in hypotheses],
        [[" ".join(tokens) for tokens in references]],
    )
    return BleuResult(
        score=result.score,
        counts=tuple(int(c) for c in result.counts),
        totals=tuple(int(t) for t in result.totals),
        precisions=tuple(result.precisions),
        brevity_penalty=result.bp,
        hypothesis_length=int(result.sys_len),
        reference_length=int(result.ref_len),
        signature=str(bleu.get_signature()),
    )


@dataclass(frozen=True)
class PRF:
    """Precision, recall and F1 from corpus totals, micro-averaged over sentences.

    Attributes:
        overlap: matched words (token F1) or summed Dice of the paired mentions (mention F1).
        hypothesis_total: words or mentions in the hypotheses.
        reference_total: words or mentions in the references.
    """

    overlap: float
    hypothesis_total: int
    reference_total: int

    @property
    def precision(self) -> float:
        """``overlap / hypothesis_total`` in [0, 1], 0 when there is no hypothesis word."""
        return _ratio(self.overlap, self.hypothesis_total)

    @property
    def recall(self) -> float:
        """``overlap / reference_total`` in [0, 1], 0 when there is no reference word."""
        return _ratio(self.overlap, self.reference_total)

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall in [0, 1], 0 when both are 0."""
        p, r = self.precision, self.recall
        return _ratio(2 * p * r, p + r)


def tagged_words(tokens: Sequence[str], tag: str) -> Counter:
    """Return the multiset of words of one tag, suffixes stripped.

    Args:
        tokens: a linearized sequence.
        tag: ``predpatt.PREDICATE`` (``:p``/``:p_h`` words) or ``predpatt.ARGUMENT``
            (``:a``/``:a_h`` words).

    Brackets, ``SOMETHING:a=`` and untagged tokens are not words. Words count wherever they
    stand, so a hypothesis with unbalanced brackets still gets credit for its words.
    """
    return Counter(
        predpatt.strip_suffix(token) for token in tokens if predpatt.word_tag(token) == tag
    )


def token_f1(hypotheses: TokenLists, references: TokenLists, tag: str) -> PRF:
    """Compute token-level F1 of the words of one tag.

    Per sentence, the overlap is the size of the multiset intersection of hypothesis and
    reference words, so a word repeated twice in the hypothesis but once in the reference
    matches once. Overlaps and sizes are summed over the corpus before dividing.
    """
    _check_lengths(hypotheses, references)
    overlap = hypothesis_total = reference_total = 0
    for hypothesis, reference in zip(hypotheses, references):
        hypothesis_words = tagged_words(hypothesis, tag)
        reference_words = tagged_words(reference, tag)
        overlap += sum((hypothesis_words & reference_words).values())
        hypothesis_total += sum(hypothesis_words.values())
        reference_total += sum(reference_words.values())
    return PRF(overlap, hypothesis_total, reference_total)


def mentions(spans: Sequence[predpatt.Span], tag: str) -> List[Counter]:
    """Return one multiset of words per bracket of the given tag, parents before children.

    A predicate mention is the ``:p``/``:p_h`` words directly inside a ``^(((`` or ``^(((:a``
    bracket, and an argument mention is the ``:a``/``:a_h`` words directly inside a ``^((``
    bracket. Words of nested brackets belong to those brackets. A bracket without such words
    is still a mention, and it pairs with nothing because its Dice overlap is 0.
    """
    return [
        tagged_words(span.words, tag) for span in predpatt.iter_spans(spans) if span.kind == tag
    ]


def dice(first: Counter, second: Counter) -> float:
    """Return the Dice coefficient ``2 |A & B| / (|A| + |B|)`` of two multisets.

    Two empty multisets give 0.
    """
    size = sum(first.values()) + sum(second.values())
    return _ratio(2 * sum((first & second).values()), size)


def pair_mentions(
    system: Sequence[Counter], gold: Sequence[Counter]
) -> List[Tuple[int, int, float]]:
    """Pair system and gold mentions greedily, highest Dice first, each mention used once.

    Ties go to the lower system index, then the lower gold index. Pairs with Dice 0 are left
    out because they add no credit.

    Returns:
        ``(system index, gold index, Dice)`` triples in the order they were chosen.
    """
    candidates = [
        (dice(s, g), i, j) for i, s in enumerate(system) for j, g in enumerate(gold)
    ]
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))

    pairs = []
    used_system, used_gold = set(), set()
    for score, i, j in candidates:
        if score == 0:
            break
        if i in used_system or j in used_gold:
            continue
        used_system.add(i)
        used_gold.add(j)
        pairs.append((i, j, score))
    return pairs


class MalformedReference(ValueError):
    """A reference sequence whose brackets do not parse, so its mentions are unknown.

    Attributes:
        index: 0-based sentence index.
        reason: the parser's message.
    """

    def __init__(self, index: int, reason: str):
        super().__init__(f"reference sentence {index + 1} is malformed: {reason}")
        self.index = index
        self.reason = reason


def mention_f1(hypotheses: TokenLists, references: TokenLists, tag: str) -> PRF:
    """Compute mention-level F1 with partial credit for the mentions of one tag.

    Per sentence, system and gold mentions are paired by :func:`pair_mentions`. Precision is
    the summed Dice of all pairs over the number of system mentions and recall is the same sum
    over the number of gold mentions, both summed over the corpus before dividing.

    A hypothesis whose brackets do not parse has no mentions: its structure cannot be
    recovered, so it predicts nothing, and every gold mention of that sentence is missed.

    Raises:
        MalformedReference: a reference does not parse.
        ValueError: the two lists differ in length.
    """
    _check_lengths(hypotheses, references)
    overlap = 0.0
    hypothesis_total = reference_total = 0
    for index, (hypothesis, reference) in enumerate(zip(hypotheses, references)):
        try:
            gold = mentions(predpatt.parse(reference), tag)
        except predpatt.MalformedSequence as error:
            raise MalformedReference(index, str(error)) from error
        try:
            system = mentions(predpatt.parse(hypothesis), tag)
        except predpatt.MalformedSequence:
            system = []

        overlap += sum(score for _, _, score in pair_mentions(system, gold))
        hypothesis_total += len(system)
        reference_total += len(gold)
    return PRF(overlap, hypothesis_total, reference_total)


@dataclass(frozen=True)
class Recoverability:
    """The number of hypotheses that are well formed, out of all of them.

    Attributes:
        well_formed: hypotheses that pass :func:`predpatt.is_well_formed`.
        total: all hypotheses.
    """

    well_formed: int
    total: int

    @property
    def score(self) -> float:
        """``well_formed / total`` in [0, 1], 0 when there is no hypothesis."""
        return _ratio(self.well_formed, self.total)


def recoverability(hypotheses: TokenLists) -> Recoverability:
    """Count the hypotheses whose bracket structure can be recovered.

    An empty hypothesis has no brackets and therefore no span without exactly one head, so it
    counts as well formed.
    """
    well_formed = sum(1 for tokens in hypotheses if predpatt.is_well_formed(tokens))
    return Recoverability(well_formed, len(hypotheses))


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _check_lengths(hypotheses: TokenLists, references: TokenLists) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{len(hypotheses)} hypotheses but {len(references)} references; "
            "pass one hypothesis per reference"
        )
