"""``halo-train``, ``halo-generate`` and ``halo-interactive``: fairseq's tools with the plugin loaded.

Each command runs the stock fairseq command-line tool unchanged, adding ``--user-dir`` with the
absolute path of this package unless the caller already gave one. That avoids the two common
mistakes with plugins: decoding a plugin checkpoint without ``--user-dir`` (fairseq 0.12 then
fails with an unhelpful KeyError) and a relative ``--user-dir`` that fairseq cannot find from
another working directory.
"""

import os
import sys
from typing import List, Optional

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def with_user_dir(argv: List[str]) -> List[str]:
    """Return ``argv`` with ``--user-dir PACKAGE_DIR`` prepended unless one is present."""
    if any(arg == "--user-dir" or arg.startswith("--user-dir=") for arg in argv):
        return list(argv)
    return ["--user-dir", PACKAGE_DIR] + list(argv)


def _run(prog: str, module: str, argv: Optional[List[str]]) -> None:
    import importlib

    args = sys.argv[1:] if argv is None else argv
    sys.argv = [prog] + with_user_dir(args)
    importlib.import_module(module).cli_main()


def train(argv: Optional[List[str]] = None) -> None:
    """Run ``fairseq-train`` with the plugin."""
    _run("halo-train", "fairseq_cli.train", argv)


def generate(argv: Optional[List[str]] = None) -> None:
    """Run ``fairseq-generate`` with the plugin."""
    _run("halo-generate", "fairseq_cli.generate", argv)


def interactive(argv: Optional[List[str]] = None) -> None:
    """Run ``fairseq-interactive`` with the plugin."""
    _run("halo-interactive", "fairseq_cli.interactive", argv)


def user_dir() -> None:
    """Print the absolute path to pass as ``--user-dir`` to fairseq's own tools."""
    print(PACKAGE_DIR)
