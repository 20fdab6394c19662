#!/usr/bin/env bash
# GPU smoke check for the align path: synthetic features (default encoder shapes) -> align stage under
# torchrun on the chosen device -> evaluate stage -> align benchmark (mean pool and Perceiver).
# Runs the same on the CPU (`--device cpu`, tested in CI with tiny sizes). Prints one summary line per part.
#   bash benchmarks/gpu_smoke.sh [--device cuda|cpu|auto] [--items 2000] [--bench-items 20000]
#                                [--steps 40] [--bench-steps 50] [--batch 1024]
# Output goes to $OUT (the device tool's folder) when set, else benchmarks/results/gpu_smoke.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda ITEMS=2000 BENCH=20000 STEPS=40 BENCH_STEPS=50 BATCH=1024
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --items) ITEMS=$2; shift 2 ;;
    --bench-items) BENCH=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --bench-steps) BENCH_STEPS=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "gpu_smoke.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
RESULTS=${OUT:-benchmarks/results/gpu_smoke}
WORK=${WORK:-/tmp/edge_glass_gpu_smoke}
mkdir -p "$RESULTS" "$WORK"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python - <<PY
import torch
print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY

t0=$(date +%s)
python -m edge_glass.synthetic --out "$WORK/tiny" --items "$ITEMS" --shard-size 512 >/dev/null
TRAIN_BATCH=$(( BATCH < ITEMS / 2 ? BATCH : 64 ))
python - "$WORK/tiny/params.yaml" "$DEVICE" "$STEPS" "$TRAIN_BATCH" <<'PY'
import sys, yaml
path, device, steps, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
params = yaml.safe_load(open("params.yaml"))
params["align"]["device"] = device
params["align"]["train"].update(steps=steps, batch_size=batch, warmup_steps=min(10, steps // 2),
                                checkpoint_every=max(steps // 2, 1), eval_every=max(steps // 2, 1), log_every=5)
yaml.safe_dump(params, open(path, "w"), sort_keys=False)
PY
torchrun --standalone --nproc_per_node=1 stages/align.py --params "$WORK/tiny/params.yaml" \
  --features "$WORK/tiny/features" --manifest "$WORK/tiny/download/manifest.parquet" \
  --out "$WORK/tiny/align" --live "$WORK/tiny/live" 2>&1 | grep -v "it/s\]" | tail -3
python stages/evaluate.py --params "$WORK/tiny/params.yaml" --features "$WORK/tiny/features" \
  --manifest "$WORK/tiny/download/manifest.parquet" --model "$WORK/tiny/align" --captions '' \
  --metrics "$RESULTS/retrieval.json" --plot "$RESULTS/recall_by_dim.csv" 2>&1 | grep "to_text" | head -3
echo "smoke_align_evaluate device=$DEVICE items=$ITEMS steps=$STEPS seconds=$(( $(date +%s) - t0 ))"

for pool in mean perceiver; do
  python benchmarks/align.py --synthetic "$BENCH" --device "$DEVICE" --batch-size "$BATCH" --steps "$BENCH_STEPS" \
    --pool "$pool" --workdir "$WORK" 2>&1 | tail -1 | tee -a "$RESULTS/align_bench.txt"
done
