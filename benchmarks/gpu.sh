#!/usr/bin/env bash
# The GPU checks of issue 7, as one script for a machine with a CUDA GPU (run from the repository root):
# the CUDA paths of training (bf16 autocast, TF32, fused AdamW, compile) end to end, then the throughput
# table against diffusers in fp32 and bf16, without and with torch.compile, with the achieved fraction
# of the GPU's bf16 matrix peak. About 8 minutes on one H100.
#
# It installs nothing (GPU machines are often offline): it needs torch with CUDA and the package's
# dependencies (pip install -e '.[bench]' where pip works, or wheels carried in). Without diffusers it
# runs the training checks only. Results go to $OUT (default: a temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
out=${OUT:-$(mktemp -d)}
$py - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device"
print(torch.cuda.get_device_name(), "torch", torch.__version__, "bf16", torch.cuda.is_bf16_supported())
PY
# training on CUDA: bf16 autocast ("auto"), fused AdamW, TF32; then with compile; then sampling
$py -m diffusely.cli train shapes --out "$out/eager" --steps 200 --batch-size 64 --sample-every 200 --quiet
$py -m diffusely.cli train shapes --out "$out/compiled" --steps 200 --batch-size 64 --sample-every 200 --quiet --compile
$py -m diffusely.cli sample "$out/eager" -n 256 --batch-size 256 --out "$out/samples" --grid "$out/grid.png"
for r in eager compiled; do tail -n 2 "$out/$r/log.csv" | sed "s/^/$r log: /"; done
if ! $py -c "import diffusers" 2>/dev/null; then
  echo "diffusers is not installed: the throughput table needs it (pip install -e '.[bench]')"; exit 0
fi
$py benchmarks/throughput.py --sizes 32,64 --precision fp32,bf16 --repeats 5 --iters 20 --json "$out/throughput.json"
$py benchmarks/throughput.py --sizes 32,64 --precision fp32,bf16 --repeats 5 --iters 20 --compile --no-memory \
  --json "$out/throughput-compiled.json"
