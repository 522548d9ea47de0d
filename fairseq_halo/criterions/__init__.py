"""Criteria registered by fairseq-halo (fairseq's ``--user-dir`` loader does not import this folder)."""

from . import halo_cross_entropy  # noqa: F401
