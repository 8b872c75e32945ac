#!/usr/bin/env bash
# One-call check of the GPU paths on a machine with an NVIDIA GPU; run from the repository root:
#
#     bash benchmarks/gpu_check.sh [CREMA_D_AUDIO_DIR]      (default ../shared/data/crema-d/audio)
#
# Installs the gpu and backends extras, checks that TensorFlow, JAX and PyTorch each see the GPU,
# trains `--arch combined --width 0.25` for one epoch on CREMA-D on the CPU and on the GPU, with
# --mixed-precision and with --distribute, runs a two-trial `serkeras tune` (TensorBoard logs), and,
# when `serkeras train` has --fine-tune-layers and $WHISPER_DIR is set, one whisper epoch. Every step's
# result, time and training samples/s go to one file, $OUT/gpu_check.txt (default
# benchmarks/gpu_check_results/); a failed step is recorded and the next one runs. Ten minutes at most.
# SKIP_INSTALL=1 skips the install; GPU_CHECK_EPOCH_CLIPS sets how many clips train (default 2400).
set -u
DATA=${1:-../shared/data/crema-d/audio}
OUT_DIR=${OUT:-benchmarks/gpu_check_results}
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/gpu_check.txt"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
: >"$RESULTS"
note() { echo "$*" | tee -a "$RESULTS"; }

# step NAME TIMEOUT_S COMMAND...: run, record status and seconds, keep the output's tail on failure.
step() {
    local name=$1 limit=$2; shift 2
    local start=$SECONDS status
    timeout "$limit" "$@" >"$WORK/$name.log" 2>&1
    status=$?
    note "step $name: $([ $status -eq 0 ] && echo ok || echo "FAILED (exit $status)") in $((SECONDS - start)) s"
    [ $status -eq 0 ] || tail -n 15 "$WORK/$name.log" | sed 's/^/    /' >>"$RESULTS"
    return $status
}

# The training part's clips per second over the run's timed epochs (metrics.json's train_seconds).
rate() {
    python - "$1" "$WORK/$2.log" <<'PY' 2>/dev/null || echo "n/a"
import json, re, sys
metrics = json.load(open(sys.argv[1]))
clips = int(re.search(r"train (\d+)", open(sys.argv[2]).read()).group(1))
print(f"{clips * metrics['timed_epochs'] / metrics['train_seconds']:.1f}")
PY
}

note "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname); data $DATA"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } >>"$RESULTS" 2>/dev/null \
    || note "nvidia-smi: none"
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    # torch from the backends extra is the CPU build; the CUDA one would be pulled from PyTorch's own index.
    step install 300 pip install -q -e ".[gpu,backends]" "jax[cuda12]"
fi
for backend in tensorflow jax torch; do
    step "sees-gpu-$backend" 120 env KERAS_BACKEND=$backend python - <<'PY' \
        && grep "^$backend \[" "$WORK/sees-gpu-$backend.log" | sed 's/^/    /' >>"$RESULTS"
import os
backend = os.environ["KERAS_BACKEND"]
if backend == "tensorflow":
    import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
elif backend == "jax":
    import jax
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
else:
    import torch
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
print(backend, gpus)
raise SystemExit(0 if gpus else f"{backend} sees no GPU")
PY
done

COMMON=(--data-dir "$DATA" --cache-dir "$WORK/cache" --output-dir "$WORK/models" --log-dir "$WORK/logs"
        --split actor --arch combined --width 0.25 --epochs 1 --batch-size 64 --quiet)
# The first clips by name (whole actors but the last): an epoch on the CPU and the install fit in ten minutes.
CLIPS=${GPU_CHECK_EPOCH_CLIPS:-2400}
mkdir -p "$WORK/subset/audio"
ls "$DATA" | grep -E '\.(ogg|wav)$' | head -n "$CLIPS" | while read -r f; do
    ln -s "$(cd "$DATA" && pwd)/$f" "$WORK/subset/audio/$f"; done
cp "$DATA/../VideoDemographics.csv" "$WORK/subset/" 2>/dev/null || note "no VideoDemographics.csv beside $DATA"
COMMON[1]="$WORK/subset/audio"
note "training data: $(ls "$WORK/subset/audio" | wc -l) clips of $DATA"
step features 300 serkeras features --data-dir "${COMMON[1]}" --cache-dir "$WORK/cache"
CUDA_VISIBLE_DEVICES= step train-cpu 300 serkeras train "${COMMON[@]}" --run-name cpu
note "    cpu: $(rate "$WORK/models/cpu/metrics.json" train-cpu) clips/s"
step train-gpu 300 serkeras train "${COMMON[@]}" --run-name gpu
note "    gpu: $(rate "$WORK/models/gpu/metrics.json" train-gpu) clips/s"
step train-gpu-mixed 300 serkeras train "${COMMON[@]}" --run-name mixed --mixed-precision
note "    gpu, mixed precision: $(rate "$WORK/models/mixed/metrics.json" train-gpu-mixed) clips/s"
# One GPU is one device: --distribute must refuse it in one line; with several it trains.
step train-gpu-distribute 300 serkeras train "${COMMON[@]}" --run-name distributed --distribute
note "    gpu, --distribute: $(rate "$WORK/models/distributed/metrics.json" train-gpu-distribute) clips/s"
grep "^error:" "$WORK/train-gpu-distribute.log" | sed 's/^/    /' >>"$RESULTS"
step train-gpu-jax 300 env KERAS_BACKEND=jax serkeras train "${COMMON[@]}" --run-name jax
note "    gpu, jax: $(rate "$WORK/models/jax/metrics.json" train-gpu-jax) clips/s"
step tune 300 serkeras tune "${COMMON[@]}" --search-name gpu-tune --tuner random --max-trials 2
find "$WORK/logs/gpu-tune" -name "events.out.tfevents.*" | head -n 1 | grep -q . \
    && note "    tune: TensorBoard logs written" || note "    tune: no TensorBoard logs"
if serkeras train --help 2>/dev/null | grep -q fine-tune-layers && [ -n "${WHISPER_DIR:-}" ]; then
    step train-whisper 300 serkeras train "${COMMON[@]/combined/whisper}" --encoder "$WHISPER_DIR" \
        --fine-tune-layers 2 --run-name whisper
    note "    whisper: $(rate "$WORK/models/whisper/metrics.json" train-whisper) clips/s"
else
    note "step train-whisper: skipped (needs serkeras train --fine-tune-layers and \$WHISPER_DIR)"
fi
note "done in $SECONDS s; results in $RESULTS"
