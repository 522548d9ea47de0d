"""Class partitions of a fairseq target dictionary for the Halo term and selective decoding.

A partition assigns each dictionary index a class id in ``[0, num_classes)`` or -1 (no class).
Three kinds are built here: the predicate/argument tag rule of the linearized PredPatt format
(:mod:`fairseq_halo.predpatt`), a token-to-class TSV file, and the singleton partition in which
every real token is its own class.
"""

import logging
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from . import predpatt

logger = logging.getLogger(__name__)

NO_CLASS = -1

# fairseq's Dictionary.finalize(padding_factor=8) pads the vocabulary with these symbols.
PADDING_SYMBOL = re.compile(r"madeupword\d+")

PARTITION_CHOICES = ("tag", "tsv", "singleton")


@dataclass
class Partition:
    """A class id per dictionary index.

    Attributes:
        token_class: ``(V,)`` int64, the class of each dictionary index, -1 for no class.
        class_names: the name of each class id.
        kind: how the partition was built (``tag``, ``tsv`` or ``singleton``).
    """

    token_class: torch.Tensor
    class_names: List[str]
    kind: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_singleton(self) -> bool:
        return self.kind == "singleton"

    def class_sizes(self) -> List[int]:
        counts = torch.bincount(self.token_class[self.token_class >= 0], minlength=self.num_classes)
        return counts.tolist()

    def class_members(self) -> List[torch.Tensor]:
        """Return the dictionary indices of each class, ``num_classes`` int64 tensors."""
        return [
            torch.nonzero(self.token_class == c, as_tuple=False).squeeze(1)
            for c in range(self.num_classes)
        ]

    def summary(self) -> str:
        sizes = ", ".join(
            f"{name}={size}" for name, size in zip(self.class_names, self.class_sizes())
        )
        unassigned = int((self.token_class < 0).sum())
        if self.is_singleton:
            sizes = f"{self.num_classes} classes of one token each"
        return f"{self.kind} partition: {sizes}; {unassigned} symbols without a class"


def _is_unclassed_symbol(dictionary, index: int, symbol: str) -> bool:
    """Return whether a symbol never gets a class: padding, beginning of sentence, fillers."""
    return index in (dictionary.pad(), dictionary.bos()) or bool(PADDING_SYMBOL.fullmatch(symbol))


def tag_partition(dictionary, unk_class: str = predpatt.ARGUMENT) -> Partition:
    """Build the two-class predicate/argument partition of a PredPatt target dictionary.

    ``</s>`` is a predicate token (a sequence ends after a predicate closes), plain ``<unk>``
    takes ``unk_class``, tag-preserving unknowns such as ``<unk>:p_h`` follow their suffix, and
    every other token follows :func:`fairseq_halo.predpatt.token_tag`.
    """
    if unk_class not in (predpatt.PREDICATE, predpatt.ARGUMENT):
        raise ValueError(
            f"--halo-unk-class {unk_class!r} is invalid; use "
            f"{predpatt.PREDICATE!r} or {predpatt.ARGUMENT!r}"
        )
    class_names = [predpatt.PREDICATE, predpatt.ARGUMENT]
    class_id = {name: i for i, name in enumerate(class_names)}
    token_class = torch.full((len(dictionary),), NO_CLASS, dtype=torch.long)
    for index, symbol in enumerate(dictionary.symbols):
        if _is_unclassed_symbol(dictionary, index, symbol):
            continue
        if index == dictionary.eos():
            tag = predpatt.PREDICATE
        elif index == dictionary.unk():
            tag = unk_class
        else:
            tag = predpatt.token_tag(symbol)
        if tag is not None:
            token_class[index] = class_id[tag]
    return Partition(token_class, class_names, "tag")


def read_class_tsv(path: str):
    """Read a ``token<TAB>class`` file into a dict, with errors that name the file and line."""
    mapping = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 2 or not fields[0] or not fields[1]:
                raise ValueError(
                    f"{path}:{line_number}: expected 'token<TAB>class', found {line!r}"
                )
            token, name = fields
            if token in mapping and mapping[token] != name:
                raise ValueError(
                    f"{path}:{line_number}: token {token!r} is given class {name!r} here and "
                    f"{mapping[token]!r} on an earlier line"
                )
            mapping[token] = name
    if not mapping:
        raise ValueError(f"{path}: the class file is empty; give one 'token<TAB>class' per line")
    return mapping


def tsv_partition(dictionary, path: str) -> Partition:
    """Build a partition from a ``token<TAB>class`` file (any number of classes).

    Dictionary tokens missing from the file get no class and are left out of the Halo term.
    """
    mapping = read_class_tsv(path)
    class_names = sorted(set(mapping.values()))
    class_id = {name: i for i, name in enumerate(class_names)}
    token_class = torch.full((len(dictionary),), NO_CLASS, dtype=torch.long)
    for index, symbol in enumerate(dictionary.symbols):
        if symbol in mapping and not _is_unclassed_symbol(dictionary, index, symbol):
            token_class[index] = class_id[mapping[symbol]]
    return Partition(token_class, class_names, "tsv")


def singleton_partition(dictionary) -> Partition:
    """Build the partition in which every real token is a class of its own."""
    token_class = torch.full((len(dictionary),), NO_CLASS, dtype=torch.long)
    class_names = []
    for index, symbol in enumerate(dictionary.symbols):
        if not _is_unclassed_symbol(dictionary, index, symbol):
            token_class[index] = len(class_names)
            class_names.append(symbol)
    return Partition(token_class, class_names, "singleton")


def build_partition(
    dictionary, kind: str = "tag", class_file: Optional[str] = None,
    unk_class: str = predpatt.ARGUMENT,
) -> Partition:
    """Build, check and log the partition chosen by ``--halo-partition``.

    Raises:
        ValueError: an unknown kind, a missing ``--halo-class-file`` for ``tsv``, or a class
            without any token in the dictionary.
    """
    if kind == "tag":
        partition = tag_partition(dictionary, unk_class=unk_class)
    elif kind == "tsv":
        if not class_file:
            raise ValueError("--halo-partition tsv needs --halo-class-file PATH (token<TAB>class)")
        partition = tsv_partition(dictionary, class_file)
    elif kind == "singleton":
        partition = singleton_partition(dictionary)
    else:
        raise ValueError(
            f"--halo-partition {kind!r} is invalid; choose one of {', '.join(PARTITION_CHOICES)}"
        )
    # </s> and plain <unk> are classed by rule, so they cannot show that the words are tagged.
    rule_indices = (dictionary.eos(), dictionary.unk()) if kind == "tag" else ()
    check_partition(partition, source=class_file or "the target dictionary",
                    rule_indices=rule_indices)
    logger.info(partition.summary())
    return partition


def check_partition(partition: Partition, source: str, rule_indices: Sequence[int] = ()) -> None:
    """Raise ValueError naming every class that has no token in the dictionary.

    Tokens at ``rule_indices`` (dictionary indices) do not count towards a class's size.
    """
    token_class = partition.token_class.clone()
    for index in rule_indices:
        token_class[index] = NO_CLASS
    sizes = torch.bincount(token_class[token_class >= 0], minlength=partition.num_classes)
    empty = [name for name, size in zip(partition.class_names, sizes.tolist()) if size == 0]
    if partition.num_classes == 0:
        raise ValueError(f"the {partition.kind} partition of {source} has no class at all")
    if empty:
        raise ValueError(
            f"the {partition.kind} partition of {source} leaves class(es) "
            f"{', '.join(map(repr, empty))} without any token of the target dictionary; "
            "check that the target side is linearized PredPatt (tokens ending in :p or :a) "
            "or choose another --halo-partition"
        )


def gold_classes(partition: Partition, target: torch.Tensor) -> torch.Tensor:
    """Map ``(B, T)`` int64 target ids to their ``(B, T)`` int64 class ids (-1 for none)."""
    return partition.token_class.to(target.device)[target]


def unclassed_symbols(dictionary, partition: Partition) -> Sequence[str]:
    """Return the dictionary symbols without a class other than the special ones."""
    return [
        symbol for index, symbol in enumerate(dictionary.symbols)
        if partition.token_class[index] < 0
        and not _is_unclassed_symbol(dictionary, index, symbol)
    ]
