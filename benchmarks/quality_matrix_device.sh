#!/usr/bin/env bash
# The GPU half of the quality matrix, run on the lent GPU machine from the repo root (the device tool
# sets $OUT; elsewhere out/device). It expects what `quality_matrix_device.py pack` wrote to .devbundle/
# and, where the machine lacks them, wheels in .whl/ (sentence-transformers 6.2.0 as here, datasets for
# the st recipe). Extra arguments go to `quality_matrix_device.py run` (e.g. --only scifact).
set -euo pipefail
OUT=${OUT:-out/device}
WORKERS=${WORKERS:-6}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
rm -rf /tmp/bundle && mkdir -p /tmp/bundle && tar xJf .devbundle/bundle.tar.xz -C /tmp/bundle
nvidia-smi -L || true
python3 -c "import torch, transformers, sentence_transformers, pyarrow; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'sentence-transformers', sentence_transformers.__version__, 'pyarrow', pyarrow.__version__, \
'cuda', torch.cuda.is_available())"
python3 -c "import datasets; print('datasets', datasets.__version__)" || echo "no datasets: the st cells will fail"
python3 benchmarks/quality_matrix_device.py run --bundle /tmp/bundle --model .devbundle/model --out "$OUT" \
  --workers "$WORKERS" "$@" 2>&1 | tee "$OUT/log.txt" | grep -E "quality_matrix_device|Error|error" || true
