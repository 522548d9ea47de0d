"""The ``halo-demo-data`` command: a seeded synthetic CLIE corpus for demos and tests.

An invented source language (verb-final, postpositions, case particles, noun-adjective-determiner
order, relative clauses before the noun) is paired with linearized PredPatt targets in English
words (:mod:`fairseq_halo.predpatt`). A sentence has one or two clauses. A clause may take an
object, a prepositional phrase, a relative clause on a noun, which adds a nested ``^(((``
predicate, or a clausal complement, which adds ``SOMETHING:a=`` and a ``^(((:a`` predicate. The
lexicon is fixed and the seed chooses the sentences. Every target is well formed and every target token has a tag.
"""

import argparse
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

from . import predpatt

# English words by category; each gets one invented source word. The lexicon is kept small
# (65 source and about 130 target types) so that a small model learns it within minutes on a CPU.
NOUNS = (
    "dog cat farmer teacher child river house village king queen doctor soldier bird horse "
    "market letter book boat city garden road student merchant judge"
).split()
ADJECTIVES = "big small old young red quiet brave tired".split()
TRANSITIVE_VERBS = (
    "saw found helped visited followed chased built painted sold bought carried watched"
).split()
INTRANSITIVE_VERBS = "slept arrived laughed left waited danced".split()
CLAUSAL_VERBS = "said believed heard knew".split()
PREPOSITIONS = "near behind in with".split()
DETERMINERS = ("the", "a")

# Source particles: subject, object, complementizer, relative clause marker, clause coordinator.
SUBJECT, OBJECT, COMPLEMENTIZER, RELATIVE, AND = "ga", "o", "to", "ri", "ke"

# The invented words are drawn once from this fixed seed, so every corpus shares one language.
LEXICON_SEED = 20180601
CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"

MIN_SOURCE_TOKENS, MAX_SOURCE_TOKENS = 5, 20
MAX_ATTEMPTS_PER_SENTENCE = 1000


def build_lexicon() -> Dict[str, str]:
    """Map every English word of the demo language to its invented source word."""
    rng = random.Random(LEXICON_SEED)
    taken = {SUBJECT, OBJECT, COMPLEMENTIZER, RELATIVE, AND}
    lexicon = {}
    for word in (*NOUNS, *ADJECTIVES, *TRANSITIVE_VERBS, *INTRANSITIVE_VERBS, *CLAUSAL_VERBS,
                 *PREPOSITIONS, *DETERMINERS):
        while True:
            syllables = 1 if word in DETERMINERS else rng.choice((2, 2, 3))
            candidate = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS)
                                for _ in range(syllables))
            if candidate not in taken:
                break
        taken.add(candidate)
        lexicon[word] = candidate
    return lexicon


LEXICON = build_lexicon()


@dataclass
class NounPhrase:
    determiner: str
    noun: str
    adjective: Optional[str] = None
    relative: Optional["Clause"] = None  # a clause whose missing subject is this noun


@dataclass
class Clause:
    verb: str
    subject: Optional[NounPhrase] = None  # None inside a relative clause
    obj: Optional[NounPhrase] = None
    preposition: Optional[str] = None
    prepositional_object: Optional[NounPhrase] = None
    complement: Optional["Clause"] = None  # with a clausal verb


class SentenceSampler:
    """Draws random clauses from one ``random.Random`` and renders them on both sides."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def noun_phrase(self, allow_relative: bool) -> NounPhrase:
        rng = self.rng
        phrase = NounPhrase(rng.choice(DETERMINERS), rng.choice(NOUNS))
        if rng.random() < 0.3:
            phrase.adjective = rng.choice(ADJECTIVES)
        if allow_relative and rng.random() < 0.12:
            phrase.relative = self.clause(depth=2, has_subject=False)
        return phrase

    def clause(self, depth: int, has_subject: bool = True) -> Clause:
        """Draw a clause; depth 0 is a main clause, 1 a complement, 2 a relative clause."""
        rng = self.rng
        kind = rng.random()
        if depth == 0 and kind < 0.2:
            clause = Clause(rng.choice(CLAUSAL_VERBS), complement=self.clause(depth=1))
        elif kind < 0.7:
            clause = Clause(rng.choice(TRANSITIVE_VERBS),
                            obj=self.noun_phrase(allow_relative=depth == 0))
        else:
            clause = Clause(rng.choice(INTRANSITIVE_VERBS))
        if has_subject:
            clause.subject = self.noun_phrase(allow_relative=depth == 0)
        if depth < 2 and clause.complement is None and rng.random() < 0.3:
            clause.preposition = rng.choice(PREPOSITIONS)
            clause.prepositional_object = self.noun_phrase(allow_relative=False)
        return clause

    def sentence(self) -> Tuple[List[str], List[str]]:
        """Draw one sentence of one or two clauses; return (source tokens, target tokens)."""
        clauses = [self.clause(depth=0)]
        if self.rng.random() < 0.2:
            clauses.append(self.clause(depth=0))
        source = source_clause(clauses[0])
        target = predicate(clauses[0])
        for clause in clauses[1:]:
            source += [AND] + source_clause(clause)
            target += predicate(clause)
        return source, target


# Source side: SUBJ ga [COMPLEMENT to] [NP POSTPOSITION] [OBJ o] VERB.

def source_phrase(phrase: NounPhrase) -> List[str]:
    tokens = []
    if phrase.relative is not None:
        tokens += source_clause(phrase.relative) + [RELATIVE]
    tokens.append(LEXICON[phrase.noun])
    if phrase.adjective:
        tokens.append(LEXICON[phrase.adjective])
    return tokens + [LEXICON[phrase.determiner]]


def source_clause(clause: Clause) -> List[str]:
    tokens = []
    if clause.subject is not None:
        tokens += source_phrase(clause.subject) + [SUBJECT]
    if clause.complement is not None:
        tokens += source_clause(clause.complement) + [COMPLEMENTIZER]
    if clause.preposition:
        tokens += source_phrase(clause.prepositional_object) + [LEXICON[clause.preposition]]
    if clause.obj is not None:
        tokens += source_phrase(clause.obj) + [OBJECT]
    return tokens + [LEXICON[clause.verb]]


# English side, and its linearized PredPatt analysis.

def english_phrase(phrase: NounPhrase) -> List[str]:
    words = [phrase.determiner] + ([phrase.adjective] if phrase.adjective else []) + [phrase.noun]
    if phrase.relative is not None:
        words += ["that"] + english_clause(phrase.relative)[0]
    return words


def english_clause(clause: Clause) -> Tuple[List[str], int]:
    """Return the English words of a clause (SVO) and the position of its verb."""
    words = english_phrase(clause.subject) if clause.subject is not None else []
    verb_position = len(words)
    words.append(clause.verb)
    if clause.obj is not None:
        words += english_phrase(clause.obj)
    if clause.preposition:
        words += [clause.preposition] + english_phrase(clause.prepositional_object)
    if clause.complement is not None:
        words += english_clause(clause.complement)[0]
    return words, verb_position


def argument(phrase: NounPhrase) -> List[str]:
    """Linearize a noun phrase argument; a relative clause adds a predicate after it."""
    words = [f"{phrase.determiner}:a"]
    if phrase.adjective:
        words.append(f"{phrase.adjective}:a")
    words.append(f"{phrase.noun}:a_h")
    if phrase.relative is None:
        return [predpatt.ARG_OPEN, *words, predpatt.ARG_CLOSE]
    relative_words = ["that"] + english_clause(phrase.relative)[0]
    tokens = [predpatt.ARG_OPEN, *words, *(f"{word}:a" for word in relative_words),
              predpatt.ARG_CLOSE]

    # The relative clause borrows the noun phrase as its subject.
    borrowed = Clause(**{**vars(phrase.relative),
                         "subject": NounPhrase(phrase.determiner, phrase.noun, phrase.adjective)})
    return tokens + predicate(borrowed)


def predicate(clause: Clause, open_token: str = predpatt.PRED_OPEN) -> List[str]:
    """Linearize a clause as a predicate bracket (``^(((`` or, for a complement, ``^(((:a``)."""
    tokens = [open_token]
    if clause.subject is not None:
        tokens += argument(clause.subject)
    tokens.append(f"{clause.verb}:p_h")
    if clause.obj is not None:
        tokens += argument(clause.obj)
    if clause.preposition:
        tokens += [f"{clause.preposition}:p"] + argument(clause.prepositional_object)
    if clause.complement is not None:
        words, verb_position = english_clause(clause.complement)
        flat = [f"{word}:a_h" if i == verb_position else f"{word}:a"
                for i, word in enumerate(words)]
        tokens += [predpatt.CLAUSAL_ARG, predpatt.ARG_OPEN, *flat, predpatt.ARG_CLOSE]
        tokens += predicate(clause.complement, predpatt.ARG_PRED_OPEN)
    return tokens + [predpatt.OPEN_TO_CLOSE[open_token]]


def generate_split(rng: random.Random, size: int, seen: Set[str]) -> List[Tuple[str, str]]:
    """Draw ``size`` pairs whose source sentence is not in ``seen`` (which is updated)."""
    sampler = SentenceSampler(rng)
    pairs = []
    while len(pairs) < size:
        for _ in range(MAX_ATTEMPTS_PER_SENTENCE):
            source, target = sampler.sentence()
            text = " ".join(source)
            if MIN_SOURCE_TOKENS <= len(source) <= MAX_SOURCE_TOKENS and text not in seen:
                break
        else:
            raise RuntimeError(f"no new sentence after {MAX_ATTEMPTS_PER_SENTENCE} draws; "
                               "request fewer pairs")
        assert predpatt.is_well_formed(target), target
        seen.add(text)
        pairs.append((text, " ".join(target)))
    return pairs


def generate_corpus(sizes: Dict[str, int], seed: int) -> Dict[str, List[Tuple[str, str]]]:
    """Generate every split with its own generator seeded from ``seed`` and the split name.

    Test is drawn first, then valid, then train, and no source sentence occurs twice, so the
    test set of a seed does not depend on the training size.
    """
    seen: Set[str] = set()
    corpus = {}
    for split in ("test", "valid", "train"):
        if split in sizes:
            corpus[split] = generate_split(random.Random(f"{seed}-{split}"), sizes[split], seen)
    return corpus


def write_corpus(corpus: Dict[str, List[Tuple[str, str]]], output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    for split, pairs in corpus.items():
        for side, index in (("src", 0), ("tgt", 1)):
            with open(output_dir / f"{split}.{side}", "w", encoding="utf-8", newline="\n") as f:
                f.writelines(pair[index] + "\n" for pair in pairs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="halo-demo-data",
        description="Write a seeded synthetic CLIE corpus {train,valid,test}.{src,tgt}: an "
        "invented verb-final source language paired with linearized PredPatt targets.",
    )
    parser.add_argument("output_dir", type=Path, help="folder to write (created if missing)")
    parser.add_argument("--train", type=int, default=2000, help="training pairs (default 2000)")
    parser.add_argument("--valid", type=int, default=200, help="validation pairs (default 200)")
    parser.add_argument("--test", type=int, default=200, help="test pairs (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    return parser


def cli_main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sizes = {"train": args.train, "valid": args.valid, "test": args.test}
    for split, size in sizes.items():
        if size < 1:
            parser.error(f"--{split} {size} is invalid; give at least 1 pair")
    corpus = generate_corpus(sizes, args.seed)
    write_corpus(corpus, args.output_dir)
    counts = ", ".join(f"{split} {size}" for split, size in sizes.items())
    print(f"wrote {counts} pairs (seed {args.seed}) to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
