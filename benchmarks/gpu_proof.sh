#!/usr/bin/env bash
# The GPU figures of docs/benchmarks-gpu.md, in two parts of at most ~5 minutes each (a lent GPU machine runs one
# command at a time, 15 minutes in all):
#   bash benchmarks/gpu_proof.sh part1   # kernels and operators on CUDA; AMP training at batch 256 beside timm;
#                                        # senet train end to end with --loader gpu and cpu; where the time goes
#   bash benchmarks/gpu_proof.sh part2   # fp32 and compiled training; AMP inference at batch 256 (eager,
#                                        # optimize_for_inference); batch 1 (eager, CUDA graphs); ResNeXt, SENet-154
#   bash benchmarks/gpu_proof.sh part2a  # part2 in halves, for a machine where part2 nears its 5 minutes:
#   bash benchmarks/gpu_proof.sh part2b  # (a) fp32, compiled, batch-256 inference; (b) batch 1, ResNeXt, SENet-154
#   bash benchmarks/gpu_proof.sh smoke   # every command of both parts at toy sizes on the CPU (make bench runs it)
# Runs from a clone without installing (PYTHONPATH=src); timm is needed for the --vs rows. Every table times its
# models interleaved in one process and prints Markdown: copy the tables into docs/benchmarks-gpu.md with the date.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src
PY=${PYTHON:-python}
PART=${1:-part1}
# our seresnet50 is timm's layout (stride in the 3x3, padded stem pooling): compared with timm's own module
MODELS="resnet50,se_resnet50,seresnet50"
if [ "$PART" = smoke ]; then
  DEVICE=cpu SIZE=32 BATCH=4 BIG=2 REPEATS=1 PIPELINE="--device cpu --images 16 --batch 4 --size 32 --workers 1"
  PIPELINE="$PIPELINE --epochs 1 --no-amp"
else
  DEVICE=cuda SIZE=224 BATCH=256 BIG=64 REPEATS=10 PIPELINE="--device cuda --shards"
fi
# each command's wall time follows it, so a part that nears its 5 minutes shows which step to move
run() {
  echo
  echo "\$ $*"
  local start=$SECONDS
  "$@"
  echo "($((SECONDS - start)) s)"
}
bench() { run "$PY" -m senet bench --device "$DEVICE" --size "$SIZE" --repeats "$REPEATS" "$@"; }
amp() { if [ "$DEVICE" = cuda ]; then echo --amp --channels-last; fi; }

part1() {
  if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    # the kernels on the real GPU: tests/ops (a whole se_resnet50 AMP + channels_last step through the kernels
    # against the PyTorch path, eager and compiled fullgraph, included) and the SE layer's tests; the
    # ahead-of-time compile test is for machines without a GPU
    run "$PY" -m pytest -q -p no:cacheprovider tests/ops tests/layers/test_squeeze_excite.py \
      --deselect tests/ops/test_triton_aot.py --durations=5
  fi
  # shellcheck disable=SC2046
  bench --mode train --batch "$BATCH" $(amp) --models "$MODELS" --vs timm:seresnet50
  run "$PY" benchmarks/input_pipeline.py $PIPELINE --models resnet50
  run "$PY" benchmarks/gpu_profile.py --device "$DEVICE" --size "$SIZE" --batch "$BATCH"
}

part2a() {
  bench --mode train --batch "$BATCH" --models "$MODELS" --vs timm:seresnet50
  # shellcheck disable=SC2046
  bench --mode train --batch "$BATCH" $(amp) --compile --no-memory --models "resnet50,se_resnet50"
  # shellcheck disable=SC2046
  bench --mode infer --batch "$BATCH" $(amp) --models "$MODELS" --vs timm:seresnet50
  # shellcheck disable=SC2046
  bench --mode infer --batch "$BATCH" $(amp) --optimize --models "resnet50,se_resnet50"
}

part2b() {
  bench --mode infer --batch 1 --models "resnet50,se_resnet50" --vs timm:seresnet50
  bench --mode infer --batch 1 --optimize --models "resnet50,se_resnet50"
  # shellcheck disable=SC2046
  bench --mode train --batch "$BATCH" $(amp) --models "resnext50_32x4d,se_resnext50_32x4d"
  # shellcheck disable=SC2046
  bench --mode train --batch "$BIG" $(amp) --models "resnet152,senet154"
}

# parts run one after the other, not joined by &&: bash ignores set -e inside the left side of an &&
case "$PART" in
part1) part1 ;;
part2) part2a; part2b ;;
part2a) part2a ;;
part2b) part2b ;;
smoke) part1; part2a; part2b ;;
*)
  echo "usage: $0 part1|part2|part2a|part2b|smoke" >&2
  exit 2
  ;;
esac
echo "($PART in all: $SECONDS s)"
