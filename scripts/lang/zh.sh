#!/usr/bin/env bash
# Chinese (UD Chinese-PUD) -> English linearized PredPatt.
# Data: the UD-derived evaluation set zh/ in the folder shared/data next to the
# repository (791 training pairs), or set DATA.
#
# Usage: scripts/lang/zh.sh [--dry-run]
# Training settings are the defaults of scripts/run.sh, the setting of Mei et al. (2018): Adam,
# batch 64, 2 x 512 LSTM, dropout 0.5, gradient norm clipped at 5, beam 5, lambda_ ~ Beta(1, 19);
# our choices there: learning rate 0.001, at most 30 epochs, stop after 5 epochs without a lower
# validation loss, target words seen once become tag-preserving unknowns.
# Override any variable of scripts/run.sh, e.g. for a small CPU run:
#   ARCH=halo_lstm_small MAX_EPOCH=5 SEEDS="1 2 3" scripts/lang/zh.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

export DATA="${DATA:-$repo/../shared/data/zh}"
export NAME="${NAME:-zh}"
export ARCH="${ARCH:-halo_lstm_paper}"
# 5454 source word types in 791 pairs: segment the source into 3000 sentencepiece pieces
# (sentencepiece accepts 2005 to 3271 on this training set: every character is a piece),
# and allow 60 epochs.
export SPM_VOCAB_SIZE="${SPM_VOCAB_SIZE:-3000}"
export MAX_EPOCH="${MAX_EPOCH:-60}"
exec "$here/../run.sh" "$@"
