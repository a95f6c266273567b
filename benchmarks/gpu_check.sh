#!/usr/bin/env bash
# One-shot check of diff3r on a Linux machine with one NVIDIA GPU: install from a folder
# of wheels (no network), build gsplat's CUDA kernels, run the CUDA parity tests, then
# reconstruct / refine (gsplat) / train (--stage diff3r) on the GPU, and print one table
# (benchmarks/gpu_check.py) that is also written to benchmarks/results/gpu_check.json.
# Budget: under 8 minutes on one modern GPU.
#
# Prepare the wheels beforehand, on a machine with network, for the GPU machine's Python
# (its Python must already have a CUDA build of torch; nothing else of ours is needed):
#
#   PYV=311   # the GPU machine's python version without the dot (python3 -c 'import sys;print(*sys.version_info[:2],sep="")')
#   pip download --dest wheels --only-binary=:all: --python-version "$PYV" \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform any \
#       gsplat typer rich pillow pycolmap plyfile numpy safetensors ninja pytest jaxtyping \
#       setuptools wheel
#   pip download --dest wheels --no-deps --no-binary=:none: gsplat   # if gsplat is sdist-only there
#
# and carry the folder with the repository. Then, on the GPU machine, from the repo root:
#
#   bash benchmarks/gpu_check.sh [WHEEL_DIR]          # default WHEEL_DIR: ./wheels
#   bash benchmarks/gpu_check.sh --cpu                # no GPU: the same steps, small, on the CPU
#   bash benchmarks/gpu_check.sh --installed          # dependencies already importable (e.g. wheels
#                                                     # unpacked with pip --target onto PYTHONPATH):
#                                                     # skip the install, run from the source tree
#   GPU_CHECK_TRAIN_STEPS=5 bash benchmarks/gpu_check.sh ...   # fewer training steps (default 20)
#
# --cpu exercises every non-GPU step (install skipped when no wheel folder exists, no
# gsplat, the CUDA tests skip) so the script itself is tested in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=cuda
WHEELS=./wheels
INSTALL=yes
for arg in "$@"; do
  case "$arg" in
    --cpu) MODE=cpu ;;
    --installed) INSTALL=no ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) WHEELS=$arg ;;
  esac
done
PY=${PYTHON:-python3}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
STEPS_JSON="$OUT/steps.json"
echo '{}' > "$STEPS_JSON"
T_START=$(date +%s)

note() { printf '\n== %s\n' "$*"; }
record() {  # record KEY VALUE into the steps JSON, and print it (a run cut short still shows its steps)
  printf '  %s: %s\n' "$1" "$2"
  "$PY" - "$STEPS_JSON" "$1" "$2" <<'PYEOF'
import json, sys
p, k, v = sys.argv[1:]
d = json.load(open(p))
try:
    v = float(v)
except ValueError:
    pass
d[k] = v
json.dump(d, open(p, "w"))
PYEOF
}
seconds_of() {  # seconds_of CMD... : run, print the wall time in seconds
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >"$OUT/last.log" 2>&1 || { cat "$OUT/last.log"; return 1; }
  t1=$(date +%s.%N)
  "$PY" -c "print(round($t1 - $t0, 2))"
}

if [ "$MODE" = cuda ]; then
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU visible to torch: use --cpu")'
fi

note "install (offline, from $WHEELS)"
if [ "$INSTALL" = no ]; then
  echo "(--installed: using the environment as it is)"
  "$PY" -c 'import diff3r_cli, plyfile, typer, rich, PIL, safetensors' || {
    echo "diff3r_cli or one of its dependencies is not importable (set PYTHONPATH, or give a wheel folder)" >&2
    exit 2; }
elif [ -d "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" -e ".[dev]"
elif [ "$MODE" = cuda ]; then
  echo "no wheel folder at $WHEELS (see the header of this script)" >&2
  exit 2
else
  echo "(no wheel folder: using the installed environment)"
fi

if [ "$MODE" = cuda ]; then
  note "build gsplat's CUDA kernels (first use)"
  record gsplat_build_s "$(seconds_of "$PY" -c '
import torch
from gsplat import rasterization
m = torch.zeros(1, 3, device="cuda"); m[:, 2] = 2
rasterization(m, torch.tensor([[1.0, 0, 0, 0]], device="cuda"), torch.full((1, 3), 0.1, device="cuda"),
              torch.ones(1, device="cuda"), torch.ones(1, 3, device="cuda"), torch.eye(4, device="cuda")[None],
              torch.tensor([[[10.0, 0, 8], [0, 10, 8], [0, 0, 1]]], device="cuda"), 16, 16)
torch.cuda.synchronize()')"
fi

note "tests/test_render_cuda.py"
"$PY" -m pytest -q tests/test_render_cuda.py -p no:cacheprovider | tee "$OUT/pytest.log" | tail -3
record cuda_tests "$(tail -1 "$OUT/pytest.log" | tr -d '=' | sed 's/ in .*//; s/^ *//')"

DEV=$MODE
RES=256; REFINE=50; TRAIN_STEPS=${GPU_CHECK_TRAIN_STEPS:-20}; TRAIN_RES=128
if [ "$MODE" = cpu ]; then RES=64; REFINE=3; TRAIN_STEPS=2; TRAIN_RES=32; fi
SAMPLE=sample_data/room

note "reconstruct $SAMPLE on $DEV"
record reconstruct_s "$(seconds_of "$PY" -m diff3r_cli reconstruct "$SAMPLE" --out "$OUT/scene.ply" \
  --device "$DEV" --resolution "$RES")"

note "reconstruct $SAMPLE on $DEV with random-weights MVSplat / DepthSplat files in the published layouts"
"$PY" -c '
import sys, torch
from diff3r_cli.model.backbones import BackboneConfig, BackbonePredictor
from diff3r_cli.model.backbones.checkpoints import save_published_layout
torch.manual_seed(0)
save_published_layout(BackbonePredictor(BackboneConfig()), sys.argv[1])
save_published_layout(BackbonePredictor(BackboneConfig(family="depthsplat", variant="small", train_near=0.5)),
                      sys.argv[2])' "$OUT/mvsplat.ckpt" "$OUT/depthsplat.pth"
for FAMILY in mvsplat depthsplat; do
  FILE=$OUT/$FAMILY.ckpt; [ "$FAMILY" = depthsplat ] && FILE=$OUT/$FAMILY.pth
  record "reconstruct_${FAMILY}_s" "$(seconds_of "$PY" -m diff3r_cli reconstruct "$SAMPLE" --out "$OUT/$FAMILY.ply" \
    --device "$DEV" --resolution "$RES" --model "$FILE" --no-render)"
done

note "refine $REFINE steps ($( [ "$MODE" = cuda ] && echo gsplat || echo compiled CPU ))"
BACKEND=$( [ "$MODE" = cuda ] && echo gsplat || echo auto )
record "refine_${REFINE}_s" "$(seconds_of "$PY" -m diff3r_cli --backend "$BACKEND" refine "$OUT/scene.ply" \
  --steps "$REFINE" --out "$OUT/refined.ply")"

note "train --stage diff3r, $TRAIN_STEPS steps at ${TRAIN_RES}² on $DEV"
"$PY" -m diff3r_cli data synth --out "$OUT/synth" --scenes 2 --frames 12 --resolution "$TRAIN_RES" \
  --split train >"$OUT/synth.log" 2>&1
record "train_${TRAIN_STEPS}_steps_s" "$(seconds_of "$PY" -m diff3r_cli train --data synthetic \
  --data-root "$OUT/synth" --stage diff3r --resolution "$TRAIN_RES" --batch 1 --steps "$TRAIN_STEPS" \
  --init models/diff3r-small.safetensors --out "$OUT/run" --eval-every 0)"
"$PY" - "$OUT/run/log.jsonl" "$STEPS_JSON" <<'PYEOF'
import json, sys
rows = [json.loads(x) for x in open(sys.argv[1]) if x.strip()]
tr = [r for r in rows if r.get("type") == "train"]
d = json.load(open(sys.argv[2]))
if tr:
    d["train_s_per_step"] = round(1.0 / tr[-1]["steps_per_s"], 3)
    d["train_pcg_iterations"] = tr[-1].get("pcg_iterations")
    d["train_skipped"] = tr[-1].get("skipped_total")
json.dump(d, open(sys.argv[2], "w"))
PYEOF

note "predictor timings (benchmarks/predictor.py)"
if [ "$MODE" = cuda ]; then
  "$PY" benchmarks/predictor.py --device cuda --res 256 --repeats 5 --rounds 1 | tee "$OUT/predictor.log"
fi

note "timings"
SIZES="256 512"; PRED="256"; IFT="128"
if [ "$MODE" = cpu ]; then SIZES="32 64"; PRED="64"; IFT="32"; fi
record total_script_s "$(( $(date +%s) - T_START ))"
# shellcheck disable=SC2086  # SIZES is a list of numbers
"$PY" benchmarks/gpu_check.py --device "$DEV" --sizes $SIZES --predict-res "$PRED" --ift-res "$IFT" \
  --extra "$STEPS_JSON" \
  ${GPU_CHECK_OUT:+--out "$GPU_CHECK_OUT"}
