#!/usr/bin/env bash
# Device smoke check of every stage, then the benchmarks that need the device.
#  1. smoke assets (edge_glass.tools.smoke): synthetic media (images, tones, captions) as a `table` dataset and
#     random-weight models with the default architectures (MiniLM-L6, Whisper tiny.en, SmolLM2-135M;
#     EfficientNet-Lite0 via preprocess.vision.weights=random): the packaged weights cannot travel;
#  2. download -> preprocess (DataLoader workers) -> align (torchrun) -> decode -> evaluate, on --device;
#  3. benchmarks/preprocess.py (stage vs bare encoder), benchmarks/decode.py --generation (KV cache),
#     benchmarks/align.py --synthetic (mean pool and Perceiver).
# Runs the same on the CPU (`--device cpu --tiny`, tested in CI with tiny sizes). One summary line per part.
#   bash benchmarks/gpu_smoke.sh [--device cuda|cpu|auto] [--items 256] [--bench-items 20000] [--steps 40]
#                                [--bench-steps 50] [--batch 1024] [--workers 8] [--tiny] [--no-bench]
# Output goes to $OUT (the device tool's folder) when set, else benchmarks/results/gpu_smoke.
# Packages the device image lacks: `bash benchmarks/device_carry.sh` (then carry .carry/).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda ITEMS=256 BENCH=20000 STEPS=40 BENCH_STEPS=50 BATCH=1024 WORKERS=8 TINY="" BENCHMARKS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --items) ITEMS=$2; shift 2 ;;
    --bench-items) BENCH=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --bench-steps) BENCH_STEPS=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --tiny) TINY=--tiny; shift ;;
    --no-bench) BENCHMARKS=0; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "gpu_smoke.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
RESULTS=${OUT:-benchmarks/results/gpu_smoke}
WORK=${WORK:-/tmp/edge_glass_gpu_smoke}
mkdir -p "$RESULTS" "$WORK"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the device has no editable install of edge_glass
# packages the device image lacks (benchmarks/device_carry.sh), only where they are missing: its
# wheels are built for the device's Python 3.12
if [ -d .carry/site ] && ! python -c "import pydantic, soundfile" 2>/dev/null; then
  export PYTHONPATH=$PWD/.carry/site:$PYTHONPATH
fi
python - <<PY
import torch
print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
quiet() { grep -v -e "it/s\]" -e "item/s\]" -e "step/s" -e "Warning" || true; }

t0=$(date +%s)
S=$WORK/stages
rm -rf "$S" && mkdir -p "$S"
TRAIN_BATCH=$(( BATCH < ITEMS / 2 ? BATCH : ITEMS / 4 ))
python -m edge_glass.tools.smoke --out "$S" --items "$ITEMS" $TINY --params params.yaml --device "$DEVICE" \
  --steps "$STEPS" --batch "$TRAIN_BATCH" --workers "$WORKERS" | tail -1 > "$WORK/assets.json"
P=$S/params.yaml
python stages/download.py --params "$P" --out "$S/download" --metrics "$S/download.json" 2>&1 | quiet | tail -1
python stages/preprocess.py --params "$P" --manifest "$S/download/manifest.parquet" --out "$S/features" \
  --metrics "$RESULTS/preprocess.json" 2>&1 | quiet | tail -3
torchrun --standalone --nproc_per_node=1 stages/align.py --params "$P" --features "$S/features" \
  --manifest "$S/download/manifest.parquet" --out "$S/align" --live '' 2>&1 | quiet | tail -1
python stages/decode.py --params "$P" --features "$S/features" --manifest "$S/download/manifest.parquet" \
  --align "$S/align" --lm "$S/models/lm" --out "$S/decode" --live '' 2>&1 | quiet | tail -1
python stages/evaluate.py --params "$P" --features "$S/features" --manifest "$S/download/manifest.parquet" \
  --model "$S/align" --captions "$S/decode/captions.parquet" --metrics "$RESULTS/retrieval.json" \
  --plot "$S/recall_by_dim.csv" --queries "$S/retrieval_queries.parquet" --caption-metrics "$RESULTS/captions.json" \
  --caption-items "$S/caption_items.parquet" --caption-samples "$S/samples.md" --zeroshot "$S/zeroshot" \
  --zeroshot-metrics "$RESULTS/zeroshot.json" --confusion "$S/zeroshot_confusion.csv" --headline "$RESULTS/headline.json" 2>&1 \
  | quiet | tail -2
echo "smoke_stages device=$DEVICE items=$ITEMS steps=$STEPS seconds=$(( $(date +%s) - t0 ))"
[ "$BENCHMARKS" = 1 ] || exit 0

python benchmarks/preprocess.py --manifest "$S/download/manifest.parquet" --params "$P" --items "$ITEMS" \
  --workers 0 "$WORKERS" 2>&1 | quiet | tail -4 | tee "$RESULTS/preprocess_bench.txt"
python benchmarks/decode.py --generation --params "$P" --features "$S/features" \
  --manifest "$S/download/manifest.parquet" --align "$S/align" --lm "$S/models/lm" --items 64 2>&1 | quiet | tail -2 \
  | tee "$RESULTS/decode_bench.txt"
for pool in mean perceiver; do
  python benchmarks/align.py --synthetic "$BENCH" --device "$DEVICE" --batch-size "$BATCH" --steps "$BENCH_STEPS" \
    --pool "$pool" --workdir "$WORK" 2>&1 | tail -1 | tee -a "$RESULTS/align_bench.txt"
done
echo "gpu_smoke done device=$DEVICE seconds=$(( $(date +%s) - t0 ))"
