#!/usr/bin/env bash
# Issue 11's GPU figures, in parts of at most ~4 minutes each (a lent GPU machine runs one command at a time):
#   bash benchmarks/gpu-se-operator.sh check     # the Triton kernels and the AMP path on the real GPU (~1 min)
#   bash benchmarks/gpu-se-operator.sh train     # training steps: AMP + channels_last, fp32, compiled (~4 min)
#   bash benchmarks/gpu-se-operator.sh infer     # inference: AMP + channels_last, batch 1 with optimize (~3 min)
#   bash benchmarks/gpu-se-operator.sh others    # se_resnext50_32x4d and senet154, AMP training (~3 min)
# Runs from a clone without installing (PYTHONPATH=src); timm is needed for the --vs rows. Every table times its
# models interleaved in one process; copy the printed tables into docs/benchmarks-gpu.md with the card's name.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src
PY=${PYTHON:-python}
OURS_TV_LAYOUT="se_resnet50@stride_in_1x1=False,stem_pool='torchvision'"
bench() { echo; echo "\$ senet bench $*"; "$PY" -m senet bench --device cuda --size 224 "$@"; }

case "${1:-check}" in
check)
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  "$PY" -m pytest -q -p no:cacheprovider tests/ops tests/layers/test_squeeze_excite.py
  ;;
train)
  bench --mode train --batch 256 --amp --channels-last --repeats 10 \
    --models "resnet50,se_resnet50,$OURS_TV_LAYOUT" --vs timm:seresnet50
  bench --mode train --batch 256 --repeats 5 --models "resnet50,se_resnet50,$OURS_TV_LAYOUT" --vs timm:seresnet50
  bench --mode train --batch 256 --amp --channels-last --compile --repeats 10 --no-memory \
    --models "resnet50,se_resnet50"
  ;;
infer)
  bench --mode infer --batch 256 --amp --channels-last --repeats 20 \
    --models "resnet50,se_resnet50,$OURS_TV_LAYOUT" --vs timm:seresnet50
  bench --mode infer --batch 1 --repeats 50 --models "resnet50,se_resnet50" --vs timm:seresnet50
  bench --mode infer --batch 1 --repeats 50 --optimize --models "resnet50,se_resnet50"
  ;;
others)
  bench --mode train --batch 256 --amp --channels-last --repeats 5 --models "resnext50_32x4d,se_resnext50_32x4d"
  bench --mode train --batch 64 --amp --channels-last --repeats 5 --models "resnet152,senet154"
  ;;
*)
  echo "usage: $0 check|train|infer|others" >&2
  exit 2
  ;;
esac
