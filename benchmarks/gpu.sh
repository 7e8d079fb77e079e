#!/usr/bin/env bash
# The GPU checks of issue 7, as one script for a machine with a CUDA GPU (run from the repository root), in
# order of what matters most, each step capped so the whole fits a deadline (default 480 s; GPU_DEADLINE=s):
#   1. the CUDA tests (graph replay against eager, bf16 sampling, a CUDA training step)
#   2. the throughput table against diffusers, fp32 (TF32) and bf16, with sampling from CUDA graphs as a third row
#   3. a short `diffusely train` on the built-in shapes (bf16 autocast, fused AdamW), then its sampler's
#      images/s in fp32 and bf16, eager and from CUDA graphs (benchmarks/sampling_speed.py)
#   4. the throughput table under torch.compile (bf16, 32x32)
#   5. `diffusely train --compile`
# plus the GPU's measured bf16 matrix rate, to set the achieved fractions against.
#
# It installs nothing from a registry (GPU machines are often offline): it needs torch with CUDA and the package's
# dependencies. diffusers comes from the environment or from wheels in .whl/ (pip download diffusers==0.42.1
# importlib_metadata -d .whl), installed into a temporary folder. Logs and small results go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$(mktemp -d)}
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
runs=$(mktemp -d)  # training runs stay on the machine: only logs come back in $OUT
deadline=$((SECONDS + ${GPU_DEADLINE:-480}))
cap() { local left=$((deadline - SECONDS)); echo $(( left < $1 ? (left > 1 ? left : 1) : $1 )); }
step() { echo; echo "=== $1 (at ${SECONDS}s)"; }

if ! $py -c "import diffusers" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

step "device"
$py - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device"
print(torch.cuda.get_device_name(), "| torch", torch.__version__, "| bf16", torch.cuda.is_bf16_supported())
a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
for _ in range(3):
    a @ b
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(20):
    a @ b
end.record()
torch.cuda.synchronize()
print(f"measured bf16 matrix rate (8192^3, random data): {2 * 8192**3 * 20 / (start.elapsed_time(end) / 1e3) / 1e12:.0f} TFLOP/s")
PY

step "1. CUDA tests"
timeout "$(cap 90)" $py -m pytest -q -p no:cacheprovider tests/test_fast.py tests/test_performance.py 2>&1 | tail -n 15

step "2. throughput against diffusers, eager (fp32 = TF32 matmuls), with CUDA-graph sampling"
timeout "$(cap 170)" $py benchmarks/throughput.py --sizes 32,64 --precision fp32,bf16 --repeats 3 --iters 10 \
  --cuda-graphs --json "$out/throughput.json"

step "3. diffusely train shapes (bf16 autocast, fused AdamW), then its sampler"
timeout "$(cap 60)" $py -m diffusely.cli train shapes --out "$runs/eager" --steps 300 --batch-size 128 \
  --sample-every 300 --checkpoint-every 300 --quiet && tail -n 2 "$runs/eager/log.csv"
timeout "$(cap 90)" $py benchmarks/sampling_speed.py "$runs/eager" -n 1024 --batch-size 512 --repeats 3

step "4. throughput under torch.compile (bf16, 32x32: compiling two networks for training and sampling takes minutes)"
timeout "$(cap 200)" $py benchmarks/throughput.py --sizes 32 --precision bf16 --repeats 3 --iters 10 --compile \
  --no-memory --json "$out/throughput-compiled.json"

step "5. diffusely train --compile"
timeout "$(cap 120)" $py -m diffusely.cli train shapes --out "$runs/compiled" --steps 300 --batch-size 128 \
  --sample-every 300 --checkpoint-every 300 --quiet --compile && tail -n 2 "$runs/compiled/log.csv"
echo "done at ${SECONDS}s"
