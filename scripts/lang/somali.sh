#!/usr/bin/env bash
# Somali -> English linearized PredPatt.
# Data: not shipped. Place train, valid and test .src/.tgt files (one sentence per line,
# linearized PredPatt targets) in data/somali/ under the repository, or set DATA.
#
# Usage: scripts/lang/somali.sh [--dry-run]
# Training settings are the defaults of scripts/run.sh, the setting of Mei et al. (2018): Adam,
# batch 64, 2 x 512 LSTM, dropout 0.5, gradient norm clipped at 5, beam 5, lambda_ ~ Beta(1, 19);
# our choices there: learning rate 0.001, at most 30 epochs, stop after 5 epochs without a lower
# validation loss, target words seen once become tag-preserving unknowns.
# Override any variable of scripts/run.sh, e.g. for a small CPU run:
#   ARCH=halo_lstm_small MAX_EPOCH=5 SEEDS="1 2 3" scripts/lang/somali.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

export DATA="${DATA:-$repo/data/somali}"
export NAME="${NAME:-somali}"
export ARCH="${ARCH:-halo_lstm_paper}"
# Rich inflection: segment the source into 8000 sentencepiece pieces.
export SPM_VOCAB_SIZE="${SPM_VOCAB_SIZE:-8000}"
exec "$here/../run.sh" "$@"
