#!/usr/bin/env bash
# Demo: synthetic CLIE data (halo-demo-data), then scripts/run.sh with halo_lstm_small with and
# without Halo, ending with a table of BLEU, F1 PRED, F1 ARG and recoverability for both.
#
# Usage: scripts/demo.sh [--dry-run]
#   TINY=1   smoke test: 100 training pairs, 2 epochs, a 32-unit model, meaningless scores
#   SEED=1   seed of the data and of training; RUN_ROOT=runs   where the run goes
# Any other variable of scripts/run.sh can be overridden (e.g. MAX_EPOCH=30).
# Outputs: $RUN_ROOT/demo/ (or demo-tiny/): data/, prepared/, nohalo-seed1/, halo-seed1/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
dry_run="${DRY_RUN:-0}"
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry_run=1 ;;
        *) printf 'demo.sh: error: unknown argument %s; the only option is --dry-run\n' "$arg" >&2
           exit 1 ;;
    esac
done

seed="${SEED:-1}"
if [ "${TINY:-0}" = 1 ]; then
    export NAME="${NAME:-demo-tiny}"
    sizes=(--train 100 --valid 20 --test 20)
    export MAX_EPOCH="${MAX_EPOCH:-2}" MAX_LEN_B="${MAX_LEN_B:-10}"
    # A model of 32 units: the smoke test checks the pipeline, not the learning.
    export TRAIN_ARGS="${TRAIN_ARGS:---encoder-embed-dim 32 --encoder-hidden-size 32 \
--decoder-embed-dim 32 --decoder-hidden-size 32 --decoder-out-embed-dim 32}"
else
    export NAME="${NAME:-demo}"
    sizes=(--train 2000 --valid 200 --test 200)
    export MAX_EPOCH="${MAX_EPOCH:-20}"
fi
export RUN_ROOT="${RUN_ROOT:-$repo/runs}"
export DATA="$RUN_ROOT/$NAME/data"

# A small model trained for minutes: a higher learning rate, smaller batches and less dropout
# than the setting of Mei et al. (2018) in scripts/run.sh give more updates per second.
export ARCH="${ARCH:-halo_lstm_small}"
export LR="${LR:-0.005}" BATCH_SIZE="${BATCH_SIZE:-32}" DROPOUT="${DROPOUT-0.2}"
export PATIENCE="${PATIENCE:-3}"
export SEEDS="${SEEDS:-$seed}" CONFIGS="${CONFIGS:-nohalo halo}"

# The venv's tools when no environment is active.
if ! command -v halo-demo-data >/dev/null 2>&1 && [ -x "$repo/.venv/bin/halo-demo-data" ]; then
    PATH="$repo/.venv/bin:$PATH"
fi

start=$SECONDS
generate=(halo-demo-data "$DATA" "${sizes[@]}" --seed "$seed")
printf '+'; printf ' %q' "${generate[@]}"; printf '\n'
if [ "$dry_run" != 1 ]; then
    "${generate[@]}"
fi
DRY_RUN="$dry_run" "$here/run.sh"
if [ "$dry_run" != 1 ]; then
    printf 'demo finished in %d s\n' $((SECONDS - start))
fi
