#!/usr/bin/env bash
# Shared experiment driver: halo-prepare -> fairseq-train -> fairseq-generate -> halo-score for
# one data folder, for each configuration and seed, then a results table.
#
# Usage: DATA=path/to/data [NAME=name] [VARIABLE=value ...] scripts/run.sh [--dry-run]
#
# DATA contains {train,valid,test}.{src,tgt}: one sentence per line, linearized PredPatt targets.
# Outputs go to $RUN_ROOT/$NAME/: prepared/ (halo-prepare output, shared by all configurations)
# and <config>-seed<N>/ with checkpoints/, train.log, generate.txt and score.json.
# A configuration that already has score.json is skipped; FORCE=1 redoes everything.
#
# The defaults follow Mei et al. (2018): Adam, batch 64, gradient norm clipped at 5, dropout 0.5,
# beam 5, lambda_ ~ Beta(1, 19). Their model size, 2 layers of 512 units with a bidirectional
# encoder, comes from the architecture (ARCH). Variables:
#   DATA            data folder (required)
#   NAME            run name (default: the data folder's name)
#   ARCH            fairseq architecture (default halo_lstm_paper; halo_lstm_small for CPU runs)
#   RUN_ROOT        where runs go (default <repository>/runs)
#   CONFIGS         configurations to run (default "nohalo halo"):
#                     nohalo  cross entropy only (--halo-weight 0)
#                     halo    cross entropy plus the Halo term (HALO_* below)
#   SEEDS           training seeds (default "1")
#   LR=0.001        Adam learning rate, constant (Adam's usual default)
#   BATCH_SIZE=64  CLIP_NORM=5  DROPOUT=0.5 (empty: the architecture's default)
#   MAX_EPOCH=30  PATIENCE=5
#                   stop after MAX_EPOCH epochs, or earlier once the validation loss has not
#                   improved for PATIENCE epochs; generation uses the checkpoint with the
#                   lowest validation loss
#   HALO_WEIGHT=1  HALO_ALPHA=1  HALO_BETA=19  HALO_SAMPLES, HALO_NOISE (empty: criterion
#                   default)  LABEL_SMOOTHING (empty: none)
#   UNK_THRESHOLD=2 target words seen fewer than this many times in train become
#                   tag-preserving unknowns (<unk>:a, <unk>:p_h, ...)
#   SRC_THRESHOLD=0 source tokens seen fewer times become <unk> (0 keeps all)
#   SPM_VOCAB_SIZE  sentencepiece pieces for the source (empty or 0: no segmentation)
#   REVERSE_SOURCE=1  reverse the source token order (0: keep it)
#   DROP_BAD_TRAIN_PAIRS=0  1 drops defective training pairs instead of failing
#   BEAM=5  GEN_BATCH_SIZE=64  MAX_LEN_A=4  MAX_LEN_B=50  (hypotheses stop at
#                   MAX_LEN_A * source length + MAX_LEN_B tokens)
#   LOG_INTERVAL=50  WORKERS=1
#   PREPARE_ARGS, TRAIN_ARGS, GENERATE_ARGS   extra options, split on spaces
#   DRY_RUN=1       print the commands without running anything (same as --dry-run)
#   FORCE=1         prepare again and rerun configurations that have a score
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
user_dir="$repo/fairseq_halo"

die() { printf 'run.sh: error: %s\n' "$*" >&2; exit 1; }
say() { printf '[run] %s\n' "$*"; }

for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$arg'; the only option is --dry-run (settings are variables)" ;;
    esac
done

# Settings; each default is set here only.
[ -n "${DATA:-}" ] || die "DATA is not set; give the folder with {train,valid,test}.{src,tgt}"
if [ -d "$DATA" ]; then
    DATA="$(cd "$DATA" && pwd)"
elif [[ "$DATA" != /* ]]; then
    DATA="$PWD/$DATA"
fi
NAME="${NAME:-$(basename "$DATA")}"
ARCH="${ARCH:-halo_lstm_paper}"
RUN_ROOT="${RUN_ROOT:-$repo/runs}"
CONFIGS="${CONFIGS:-nohalo halo}"
SEEDS="${SEEDS:-1}"
LR="${LR:-0.001}"
BATCH_SIZE="${BATCH_SIZE:-64}"
CLIP_NORM="${CLIP_NORM:-5}"
DROPOUT="${DROPOUT-0.5}"
MAX_EPOCH="${MAX_EPOCH:-30}"
PATIENCE="${PATIENCE:-5}"
HALO_WEIGHT="${HALO_WEIGHT:-1}"
HALO_ALPHA="${HALO_ALPHA:-1}"
HALO_BETA="${HALO_BETA:-19}"
HALO_SAMPLES="${HALO_SAMPLES:-}"
HALO_NOISE="${HALO_NOISE:-}"
LABEL_SMOOTHING="${LABEL_SMOOTHING:-}"
UNK_THRESHOLD="${UNK_THRESHOLD:-2}"
SRC_THRESHOLD="${SRC_THRESHOLD:-0}"
SPM_VOCAB_SIZE="${SPM_VOCAB_SIZE:-0}"
REVERSE_SOURCE="${REVERSE_SOURCE:-1}"
DROP_BAD_TRAIN_PAIRS="${DROP_BAD_TRAIN_PAIRS:-0}"
BEAM="${BEAM:-5}"
GEN_BATCH_SIZE="${GEN_BATCH_SIZE:-64}"
MAX_LEN_A="${MAX_LEN_A:-4}"
MAX_LEN_B="${MAX_LEN_B:-50}"
LOG_INTERVAL="${LOG_INTERVAL:-50}"
WORKERS="${WORKERS:-1}"
DRY_RUN="${DRY_RUN:-0}"
FORCE="${FORCE:-0}"
read -r -a prepare_extra <<< "${PREPARE_ARGS:-}"
read -r -a train_extra <<< "${TRAIN_ARGS:-}"
read -r -a generate_extra <<< "${GENERATE_ARGS:-}"

run_dir="$RUN_ROOT/$NAME"
prepared="$run_dir/prepared"

# Prefer the active environment; fall back to the repository's virtual environment.
if ! command -v fairseq-train >/dev/null 2>&1 && [ -x "$repo/.venv/bin/fairseq-train" ]; then
    PATH="$repo/.venv/bin:$PATH"
fi
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"

dry() { [ "$DRY_RUN" = 1 ]; }

# Print a command; run it unless this is a dry run. "run_to FILE cmd..." sends its output to FILE.
run() {
    printf '+'; printf ' %q' "$@"; printf '\n'
    dry || "$@"
}
run_to() {
    local file="$1"; shift
    printf '+'; printf ' %q' "$@"; printf ' > %q\n' "$file"
    dry && return 0
    if ! "$@" > "$file" 2> "$file.stderr"; then
        tail -n 20 "$file.stderr" >&2
        die "command failed: $1 (output in $file, messages in $file.stderr)"
    fi
}

check_environment() {
    dry && return 0
    local tool
    for tool in halo-prepare fairseq-train fairseq-generate halo-score; do
        command -v "$tool" >/dev/null 2>&1 \
            || die "$tool not found; create the environment (scripts/setup_env.sh) and activate it"
    done
    [ -f "$DATA/train.src" ] \
        || die "no training data in DATA=$DATA; place {train,valid,test}.{src,tgt} there"
}

# 1. Validate and binarize once per run; reuse the result while the options are unchanged.
prepare() {
    local cmd=(halo-prepare "$DATA" "$prepared" --unk-threshold "$UNK_THRESHOLD"
               --src-threshold "$SRC_THRESHOLD" --workers "$WORKERS")
    [ "$SPM_VOCAB_SIZE" != 0 ] && cmd+=(--spm-vocab-size "$SPM_VOCAB_SIZE")
    [ "$REVERSE_SOURCE" = 1 ] && cmd+=(--reverse-source)
    [ "$DROP_BAD_TRAIN_PAIRS" = 1 ] && cmd+=(--drop-bad-train-pairs)
    cmd+=("${prepare_extra[@]}")
    local stamp="$run_dir/prepare.cmd" wanted
    wanted="$(printf '%q ' "${cmd[@]}")"
    if ! dry && [ "$FORCE" != 1 ] && [ -f "$prepared/prepare.json" ] && [ -f "$stamp" ] \
            && [ "$(cat "$stamp")" = "$wanted" ]; then
        say "reusing $prepared (same halo-prepare options)"
        return 0
    fi
    dry || mkdir -p "$run_dir"
    run "${cmd[@]}" --overwrite
    dry || printf '%s' "$wanted" > "$stamp"
    if ! dry && [ ! -f "$prepared/data-bin/test.src-tgt.src.idx" ]; then
        die "DATA=$DATA has no test split; place test.src and test.tgt there"
    fi
}

# Criterion options of one configuration.
criterion_args() {
    case "$1" in
        nohalo) echo "--halo-weight 0" ;;
        halo)
            local args="--halo-weight $HALO_WEIGHT --halo-alpha $HALO_ALPHA --halo-beta $HALO_BETA"
            [ -n "$HALO_SAMPLES" ] && args+=" --halo-samples $HALO_SAMPLES"
            [ -n "$HALO_NOISE" ] && args+=" --halo-noise $HALO_NOISE"
            echo "$args" ;;
        *) die "unknown configuration '$1' in CONFIGS; use nohalo or halo" ;;
    esac
}

# 2-4. Train, decode the test set with the best checkpoint, score against the raw references.
run_config() {
    local config="$1" seed="$2"
    local dir="$run_dir/$config-seed$seed"
    local halo_args
    read -r -a halo_args <<< "$(criterion_args "$config")"
    if ! dry && [ "$FORCE" != 1 ] && [ -f "$dir/score.json" ]; then
        say "$config seed $seed: already scored in $dir (FORCE=1 reruns it)"
        return 0
    fi
    dry || { [ "$FORCE" = 1 ] && rm -rf "$dir"; mkdir -p "$dir"; }

    local train=(fairseq-train "$prepared/data-bin" --user-dir "$user_dir" --task translation
                 --source-lang src --target-lang tgt --arch "$ARCH"
                 --criterion halo_cross_entropy "${halo_args[@]}")
    [ -n "$LABEL_SMOOTHING" ] && train+=(--label-smoothing "$LABEL_SMOOTHING")
    train+=(--optimizer adam --lr "$LR" --batch-size "$BATCH_SIZE"
            --required-batch-size-multiple 1 --clip-norm "$CLIP_NORM")
    [ -n "$DROPOUT" ] && train+=(--dropout "$DROPOUT")
    train+=(--max-epoch "$MAX_EPOCH" --patience "$PATIENCE" --seed "$seed"
            --save-dir "$dir/checkpoints" --no-epoch-checkpoints
            --best-checkpoint-metric loss --validate-interval 1
            --log-format simple --log-interval "$LOG_INTERVAL" --num-workers 0
            "${train_extra[@]}")
    say "$config seed $seed: training"
    local start=$SECONDS
    run_to "$dir/train.log" "${train[@]}"
    dry || echo $((SECONDS - start)) > "$dir/train_seconds"

    say "$config seed $seed: decoding the test set"
    run_to "$dir/generate.txt" fairseq-generate "$prepared/data-bin" --user-dir "$user_dir" \
        --task translation --source-lang src --target-lang tgt \
        --path "$dir/checkpoints/checkpoint_best.pt" --gen-subset test --beam "$BEAM" \
        --batch-size "$GEN_BATCH_SIZE" --required-batch-size-multiple 1 \
        --max-len-a "$MAX_LEN_A" --max-len-b "$MAX_LEN_B" --num-workers 0 \
        "${generate_extra[@]}"

    say "$config seed $seed: scoring"
    run_to "$dir/score.json" halo-score --ref "$prepared/raw/test.tgt" \
        --hyp "$dir/generate.txt" --hyp-format generate --json
}

for config in $CONFIGS; do
    criterion_args "$config" > /dev/null
done
check_environment
dry && say "dry run: printing the commands only"
prepare
result_dirs=()
for seed in $SEEDS; do
    for config in $CONFIGS; do
        run_config "$config" "$seed"
        result_dirs+=("$run_dir/$config-seed$seed")
    done
done
if dry; then
    printf '+'; printf ' %q' "$PYTHON" "$here/results_table.py" "${result_dirs[@]}"; printf '\n'
else
    printf '\nResults for %s (%s, test set of %s)\n' "$NAME" "$ARCH" "$DATA"
    "$PYTHON" "$here/results_table.py" "${result_dirs[@]}"
fi
