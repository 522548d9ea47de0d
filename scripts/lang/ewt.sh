#!/usr/bin/env bash
# English (UD English-EWT, a monolingual control) -> English linearized PredPatt.
# Data: the UD-derived evaluation set ewt/ in the folder shared/data next to the
# repository (9912 training pairs), or set DATA.
#
# Usage: scripts/lang/ewt.sh [--dry-run]
# Training settings are the defaults of scripts/run.sh, the setting of Mei et al. (2018): Adam,
# batch 64, 2 x 512 LSTM, dropout 0.5, gradient norm clipped at 5, beam 5, lambda_ ~ Beta(1, 19);
# our choices there: learning rate 0.001, at most 30 epochs, stop after 5 epochs without a lower
# validation loss, target words seen once become tag-preserving unknowns.
# Override any variable of scripts/run.sh, e.g. for a small CPU run:
#   ARCH=halo_lstm_small MAX_EPOCH=5 SEEDS="1 2 3" scripts/lang/ewt.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

export DATA="${DATA:-$repo/../shared/data/ewt}"
export NAME="${NAME:-ewt}"
export ARCH="${ARCH:-halo_lstm_paper}"
# English source: word-level source; source words seen once in train become <unk>.
export SRC_THRESHOLD="${SRC_THRESHOLD:-2}"
exec "$here/../run.sh" "$@"
