#!/usr/bin/env bash
# The GPU check (issue 15), one short run on a CUDA host:
#   1. a virtualenv of its own with the CUDA builds (torch from PyPI, onnxruntime-gpu): registries only;
#   2. the samples built here, so the build proves their batching floors on CUDA too (floors are per device);
#   3. the GPU tests: every sample's GPU output against its CPU output, weights staged to the GPU bit for bit;
#   4. benchmarks/gpu_load.py: big-mlp's snapshot -> GPU load against its floor (bytes / H2D bandwidth, same run)
#      and minilm-fp16's throughput through the gateway against its in-process ceiling;
#   5. the figures appended to benchmarks/RESULTS.md, and copied to $OUT (what the device tool brings back).
# Without a CUDA device it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "no CUDA device on this host: nothing to check (the script is ready for one)"
  exit 0
fi
OUT_DIR="${OUT:-benchmarks/out}"
mkdir -p "$OUT_DIR" benchmarks/out
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
VENV=.venv-gpu
started=$(date +%s)
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet -e ".[torch,gpu,samples]" pytest pytest-timeout hypothesis httpx
echo "install: $(( $(date +%s) - started )) s" | tee "$OUT_DIR/gpu_check.log"
nvidia-smi -L | tee -a "$OUT_DIR/gpu_check.log"
"$VENV/bin/slserve" build --functions functions 2>&1 | tail -n 12 | tee -a "$OUT_DIR/gpu_check.log"
"$VENV/bin/python" - <<'PY' | tee -a "$OUT_DIR/gpu_check.log"
from slserve.snapshot import ArtifactStore
store = ArtifactStore(".slserve/artifacts")
for name in ("classifier", "minilm-fp16", "minilm-torch", "big-mlp"):
    floors = store.current(name).manifest.build.batch_floors
    print(name, {device: len(shapes) for device, shapes in floors.items()}, "proven shapes per device")
PY
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/unit/test_device_copy.py tests/integration/test_runtimes.py \
  2>&1 | tail -n 15 | tee -a "$OUT_DIR/gpu_check.log"
"$VENV/bin/python" benchmarks/gpu_load.py --seconds 10 | tee "$OUT_DIR/gpu_check.md"
cat "$OUT_DIR/gpu_check.md" >> benchmarks/RESULTS.md
cp benchmarks/out/gpu_load.json "$OUT_DIR/" 2>/dev/null || true
echo "total: $(( $(date +%s) - started )) s" | tee -a "$OUT_DIR/gpu_check.log"
