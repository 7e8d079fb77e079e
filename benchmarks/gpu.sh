#!/usr/bin/env bash
# The GPU checks of issue 7, as one script for a machine with a CUDA GPU (run from the repository root):
# the CUDA paths of training (bf16 autocast, TF32, fused AdamW, compile) end to end, then the throughput
# table against diffusers in fp32 and bf16, without and with torch.compile, with the achieved fraction
# of the GPU's bf16 matrix peak. About 8 minutes on one H100.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e '.[bench]'
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device"
print(torch.cuda.get_device_name(), "torch", torch.__version__, "bf16", torch.cuda.is_bf16_supported())
PY
out=$(mktemp -d)
# training on CUDA: bf16 autocast ("auto"), fused AdamW, TF32; then with compile; then sampling
diffusely train shapes --out "$out/eager" --steps 200 --batch-size 64 --sample-every 200 --quiet
diffusely train shapes --out "$out/compiled" --steps 200 --batch-size 64 --sample-every 200 --quiet --compile
diffusely sample "$out/eager" -n 256 --batch-size 256 --out "$out/samples" --grid "$out/grid.png"
for r in eager compiled; do tail -n 2 "$out/$r/log.csv" | sed "s/^/$r log: /"; done
python benchmarks/throughput.py --sizes 32,64 --precision fp32,bf16 --repeats 5 --iters 20 --json "${OUT:-$out}/throughput.json"
python benchmarks/throughput.py --sizes 32,64 --precision fp32,bf16 --repeats 5 --iters 20 --compile --no-memory \
  --json "${OUT:-$out}/throughput-compiled.json"
