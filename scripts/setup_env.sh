#!/usr/bin/env bash
# Create or update the project's virtual environment, idempotently.
#
# Usage: scripts/setup_env.sh            (VENV=path to use another folder; default .venv)
#
# Order matters: torch (CPU build from the pinned version), numpy and cython come first, then
# fairseq-fixed is built without build isolation so that its build uses that torch instead of
# pulling a multi-GB CUDA torch into an isolated build environment. pip keeps the built wheel in
# its cache, so only the first set-up on a machine pays the roughly 4-minute compile.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VENV:-$here/.venv}"
constraints="$here/constraints.txt"
stamp="$venv/.fairseq-halo-setup"
python="${PYTHON:-python3}"

say() { printf '[setup] %s\n' "$*"; }

# 1. The virtual environment.
if [ ! -x "$venv/bin/python" ]; then
    say "creating virtual environment $venv"
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip)

# Skip everything when this exact set of requirements was installed before.
want="$(cat "$constraints" "$here/setup.py" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    say "environment $venv is up to date"
    exit 0
fi

# 2. torch (the pinned CPU build on a CPU machine), numpy and cython, needed to build fairseq.
say "installing torch, numpy and cython from constraints.txt"
"${pip[@]}" install --quiet -c "$constraints" torch numpy cython setuptools wheel

# 3. fairseq: the fairseq-fixed fork on Python 3.11+, stock fairseq below.
if "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    fairseq_req="fairseq-fixed"
else
    fairseq_req="fairseq==0.12.2"
fi
say "installing $fairseq_req (compiled once, then taken from pip's wheel cache)"
"${pip[@]}" install --quiet -c "$constraints" --no-build-isolation "$fairseq_req"

# 4. This package in editable mode, with the test extras.
say "installing fairseq-halo in editable mode"
"${pip[@]}" install --quiet -c "$constraints" --no-build-isolation -e "$here[test]"

# fairseq pulls in torchaudio (again with each install), which fails to load beside the CPU torch.
# The text path never imports it, so removing it keeps fairseq's optional audio imports quiet.
if "${pip[@]}" show torchaudio >/dev/null 2>&1; then
    say "removing torchaudio (not used on the text path, does not load beside this torch)"
    "${pip[@]}" uninstall --quiet --yes torchaudio
fi

echo "$want" > "$stamp"
say "done: activate with 'source $venv/bin/activate'"
