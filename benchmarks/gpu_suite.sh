#!/usr/bin/env bash
# The GPU suite: every GPU measurement in one command, in at most ~9 minutes on one
# H100/H200. Each step is time-boxed (`timeout`), so a slow or hung step cannot starve the rest:
#
#   1. pytest -m gpu tests/gpu                                   (box 140 s)
#   2. Partial FC layer on CUDA, fp32 centres + GEMM, then bf16   (box 75 s each)
#      C = 1M and 8M, r = 0.1 and 1.0: step time, 3-GEMM floor of the same run, ratio, max_memory_allocated
#   3. capacity: largest C with bf16 centres + momentum, r = 0.1, B = 128, D = 512 that completes a
#      step: doubling, then bisection                          (box 60 s; the search stops itself at 45 s)
#   4. training throughput, W = 1, r50, bf16, B = 128, C = 1M, r = 0.1: a batch already on the GPU
#      (compute bound) and through the PyTorch loader with every CPU core; images/s and the share of
#      the step in Partial FC                                   (box 90 s)
#   5. the same for ViT-B, bf16, AdamW, B = 384 (the per-GPU batch of configs/wf42m_vit_b.yaml)  (box 90 s)
#
# After every step it rewrites $OUT/gpu_report.md, $OUT/gpu_report.json (benchmarks/gpu_report.py) and
# $OUT/gpu_suite.log (every step's output), so a run stopped from outside keeps what finished.
# DALI's `mixed` (GPU decode) path is measured only where DALI is installed; the report says when it
# was not.
#
# On a GPU machine without network access (Python 3.12, torch with CUDA, numpy, pytest; no simplejpeg):
#   once, where PyPI is reachable:  benchmarks/gpu_suite.sh --fetch-wheels     # -> .whl/ (gitignored)
#   then, with .whl/ copied along:  OUT=DIR bash benchmarks/gpu_suite.sh
# The report is written under $OUT: gpu_report.md, gpu_report.json, gpu_suite.log.
#
# Without CUDA (or with GPU_SUITE_DRY=1) it runs a dry run: the same steps at tiny sizes on the CPU,
# which tests the plumbing (time boxes, report, JSON); tests/gpu/test_gpu_suite.py does that.
# Environment: OUT (report folder; default runs/gpu_suite), GPU_SUITE_WORK (scratch; default a new
# temporary folder), PYTHON (default .venv/bin/python if present, else python3),
# GPU_SUITE_BOX_<STEP> (seconds, overrides a step's box; STEP as in the report, upper case),
# GPU_SUITE_STEPS (the steps to run, e.g. "pytest capacity" to rerun two after a fix; default all).
set -uo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
SIMPLEJPEG_VERSION=1.9.0
PYTEST_TIMEOUT_VERSION=2.4.0

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  # cp312 manylinux wheels for a GPU machine without PyPI access (Python 3.12); pytest-timeout gives
  # per-test limits there.
  mkdir -p .whl
  exec "${PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "simplejpeg==$SIMPLEJPEG_VERSION" "pytest-timeout==$PYTEST_TIMEOUT_VERSION"
elif [[ $# -gt 0 ]]; then
  echo "usage: $0 [--fetch-wheels]   (see the header of this file)" >&2
  exit 2
fi

ALL_STEPS="pytest layer_fp32 layer_bf16 capacity throughput throughput_vit_b"
for chosen in ${GPU_SUITE_STEPS:-}; do
  if [[ " $ALL_STEPS " != *" $chosen "* ]]; then
    echo "gpu_suite: GPU_SUITE_STEPS names an unknown step '$chosen' (steps: $ALL_STEPS)" >&2
    exit 2
  fi
done

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
OUT=${OUT:-$REPO/runs/gpu_suite}
WORK=${GPU_SUITE_WORK:-$(mktemp -d -t gpu-suite.XXXXXX)}
mkdir -p "$OUT" "$WORK"
: >"$WORK/steps.jsonl"
export PYTHONUNBUFFERED=1

SITE="$WORK/site"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || echo "gpu_suite: installing the carried wheels failed; steps that need them will fail" >&2
fi
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"

DRY=${GPU_SUITE_DRY:-0}
if [[ "$DRY" != 1 ]] && ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  echo "gpu_suite: CUDA is not available; dry run at tiny sizes on the CPU"
  DRY=1
fi
if [[ "$DRY" == 1 ]]; then
  export CUDA_VISIBLE_DEVICES=""  # a dry run stays on the CPU even on a GPU machine (its pytest skips the GPU tests)
fi

# report: $OUT/gpu_report.{md,json} from what the steps left in $WORK, and every step's output in $OUT/gpu_suite.log.
report() {
  "$PYTHON" benchmarks/gpu_report.py --work "$WORK" --out "$OUT" --dry "$DRY" \
    || echo "gpu_suite: writing the report failed" >&2
  local log
  for log in "$WORK"/*.log; do
    echo "===== $(basename "$log")"
    cat "$log"
  done >"$OUT/gpu_suite.log"
}

# run_step NAME BOX_SECONDS COMMAND...: run under `timeout`, record rc and duration, refresh the report.
run_step() {
  local name=$1 box=$2
  shift 2
  if [[ -n "${GPU_SUITE_STEPS:-}" && " $GPU_SUITE_STEPS " != *" $name "* ]]; then
    return 0
  fi
  local override="GPU_SUITE_BOX_${name^^}"
  box=${!override:-$box}
  echo "== $name (box ${box}s): $*"
  local start=$SECONDS
  timeout --kill-after=10 "$box" "$@" >"$WORK/$name.log" 2>&1
  local rc=$?
  printf '{"name": "%s", "rc": %d, "seconds": %d, "box": %s}\n' "$name" "$rc" $((SECONDS - start)) "$box" >>"$WORK/steps.jsonl"
  tail -n 25 "$WORK/$name.log"
  echo "== $name: exit $rc after $((SECONDS - start))s"
  report
}

"$PYTHON" - >"$WORK/environment.json" <<'EOF'
import json, os, platform, subprocess, torch
cuda = torch.cuda.is_available()
env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
       "cudnn": torch.backends.cudnn.version() if cuda else None, "cpu_cores": len(os.sched_getaffinity(0)),
       "gpu": torch.cuda.get_device_name(0) if cuda else None,
       "gpu_memory_bytes": torch.cuda.get_device_properties(0).total_memory if cuda else None}
try:
    env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=20).stdout.strip() or None
except (OSError, subprocess.SubprocessError):
    env["driver"] = None
print(json.dumps(env))
EOF

if [[ "$DRY" == 1 ]]; then
  DEVICE=cpu
  LAYER=(--num-classes 2000 8000 --sample-rate 0.1 1.0 --dim 64 --batch 16 --steps 2 --warmup 1)
  CAPACITY=(--start 1000 --ceiling 8000 --dim 64 --batch 16 --time-box 10)
  THROUGHPUT=(--backbone tiny --num-classes 2000 --batch 8 --embedding-size 64 --synthetic-identities 20 --steps 1 --warmup 0)
  THROUGHPUT_VIT=(--backbone vit_t --num-classes 2000 --batch 4 --embedding-size 64 --synthetic-identities 20 --steps 1 --warmup 0)
else
  DEVICE=cuda
  LAYER=(--num-classes 1000000 8000000 --sample-rate 0.1 1.0)
  CAPACITY=(--time-box 45)
  THROUGHPUT=(--backbone r50 --num-classes 1000000 --batch 128)
  THROUGHPUT_VIT=(--backbone vit_b --num-classes 1000000 --batch 384)
fi

run_step pytest 140 "$PYTHON" -m pytest -m gpu tests/gpu -v -rA -p no:cacheprovider --junitxml="$WORK/pytest.xml"
run_step layer_fp32 75 "$PYTHON" benchmarks/partial_fc_layer.py --device "$DEVICE" "${LAYER[@]}" --gemm-dtype fp32 --param-dtype fp32
run_step layer_bf16 75 "$PYTHON" benchmarks/partial_fc_layer.py --device "$DEVICE" "${LAYER[@]}" --gemm-dtype bf16 --param-dtype bf16
run_step capacity 60 "$PYTHON" benchmarks/capacity.py --device "$DEVICE" "${CAPACITY[@]}" --sample-rate 0.1 \
  --param-dtype bf16 --json "$WORK/capacity.json"
run_step throughput 90 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 benchmarks/train_throughput.py \
  "${THROUGHPUT[@]}" --sample-rate 0.1 --amp bf16 --data-backend torch --data-dir "$WORK/data" --json "$WORK/throughput.json"
run_step throughput_vit_b 90 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 \
  benchmarks/train_throughput.py "${THROUGHPUT_VIT[@]}" --optimizer adamw --sample-rate 0.1 --amp bf16 --data-backend torch \
  --data-dir "$WORK/data" --json "$WORK/throughput_vit_b.json"

echo "gpu_suite: report in $OUT/gpu_report.md"
