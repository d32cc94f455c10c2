#!/bin/bash
# tumorforge's GPU check (issues 15 and 17) in one call of the device tool, within DEADLINE seconds.
#
#   make gpu-kit                       # here, once: cp312 wheels into .gpu-kit/wheels (git-ignored)
#   device run (carry .gpu-kit):  bash tests/gpu/device_check.sh     # figures under $OUT
#
# The GPU machine has Python 3.12 with NumPy, SciPy, CuPy and torch; the rest of what this path
# imports comes from .gpu-kit/wheels, installed without dependencies into a private folder. The
# project is imported as tumorforge.* through a folder holding one link, tumorforge -> the
# repository (the stage folders are its subpackages), so nothing is pip-installed. Ray, MONAI,
# webdataset, s3fs and matplotlib are not needed (tests/test_import_graph.py checks that path).
# Rehearse on a CPU machine: DRY=1 PY=.venv/bin/python bash tests/gpu/device_check.sh
set -u
REPO="$(pwd)"
KIT="${KIT:-$REPO/.gpu-kit}"
OUT="${OUT:-/tmp/tf_out}"
PY="${PY:-python3}"
WORK="${WORK:-/tmp/tf_gpu}"
DEADLINE="${DEADLINE:-540}"
T0=$(date +%s)
mkdir -p "$OUT" "$WORK"
log() { echo; echo "=== $* (t=$(( $(date +%s) - T0 )) s)"; }
step() {          # step SECONDS cmd...: at most SECONDS, and never past DEADLINE
  local want=$1; shift
  local left=$(( DEADLINE - ($(date +%s) - T0) - 5 ))
  local t=$(( want < left ? want : left ))
  if [ "$t" -lt 15 ]; then echo "!!! skipped, deadline: $*"; return 0; fi
  timeout "$t" "$@"; local rc=$?
  [ $rc -ne 0 ] && echo "!!! rc=$rc (124: its ${t} s ran out): $*"
  return 0
}
GPU=cupy; N=96; NC=32; NW=256; NP=3; SCALE=0.5; DP=8; NF=1024; WU=256
if [ "${DRY:-0}" = 1 ]; then GPU=numpy; N=4; NC=4; NW=8; NP=1; SCALE=0.2; DP=1; NF=8; WU=2; fi
export TUMORFORGE_CHECK_BACKEND=$GPU

log "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | head -3
"$PY" -c "import sys, numpy, scipy; print('python', sys.version.split()[0], 'numpy', numpy.__version__, 'scipy', scipy.__version__)"
[ "$GPU" = cupy ] && "$PY" -c "import cupy; d = cupy.cuda.runtime; print('cupy', cupy.__version__, 'runtime', d.runtimeGetVersion(), d.getDeviceProperties(0)['name'].decode())"
echo "cpus: $(nproc)"

log "import path"
SITE="$WORK/site"; ROOT="$WORK/root"
rm -rf "$SITE" "$ROOT"; mkdir -p "$ROOT"; ln -s "$REPO" "$ROOT/tumorforge"
if [ "${DRY:-0}" != 1 ]; then
  timeout 120 "$PY" -m pip install -q --no-index --no-deps --disable-pip-version-check \
      --target "$SITE" "$KIT"/wheels/*.whl || echo "!!! pip failed"
fi
export PYTHONPATH="$ROOT:$SITE" PYTHONDONTWRITEBYTECODE=1
export CUPY_CACHE_DIR="$WORK/cupy_cache"; rm -rf "$CUPY_CACHE_DIR"    # step 1 sees compiles
TF=("$PY" -m tumorforge.cluster)
step 60 "$PY" -c "import zarr, numcodecs, nibabel, tumorforge.cluster.front_door, tumorforge.generator.synthesize; print('imports ok')"

log "phantom scans (simulated CT, BTCV layout) and their manifest"
step 90 "$PY" -c "from tumorforge.manifests.phantoms import write_layout; write_layout('btcv', '$WORK/btcv', 2, seed=11, scale=$SCALE)"
step 60 "${TF[@]}" manifest build --layout btcv "$WORK/btcv" -o "$WORK/btcv.jsonl"
M="$WORK/btcv.jsonl"
B=("${TF[@]}" bench generator --manifest "$M" --allow-root "$WORK")

R="$WORK/results"; rm -rf "$R"; mkdir -p "$R"      # $OUT brings back 8 files: one summary
log "1. bench generator --backend $GPU, cold kernel cache, 8 crops per call"
step 120 "${B[@]}" --backend $GPU --samples $NC --warmup 0 --batch 8 --json "$R/gen_cold.json"
log "2. the GPU tests: parity with the CPU, the CUDA kernels against their CPU build"
step 120 "$PY" -m pytest -q -rA -p no:cacheprovider tests/test_generator.py tests/test_kernels.py tests/test_released_kernels.py -m gpu 2>&1 | tail -8
log "3. bench generator --backend $GPU, warm: kernels at batch 1 / 8 / 32, the array code at 8"
for b in 1 8 32; do step 60 "${B[@]}" --backend $GPU --samples $N --warmup 8 --batch $b --json "$R/gen_b$b.json"; done
step 60 "${B[@]}" --backend $GPU --kernels off --samples $N --warmup 8 --batch 8 --json "$R/gen_b8_array.json"
log "3b. parameters drawn by $DP processes beside synthesis (the GPU's own rate), float64 and float32 noise; $WU warm-up crops first build most texture operators (~0.3 ms each on the host, ~1,000 for the default draws)"
step 60 "${B[@]}" --backend $GPU --samples $NF --warmup $WU --batch 32 --draw-processes $DP --json "$R/gen_b32_drawn.json"
TUMORFORGE_KERNEL_NOISE=float32 step 60 "${B[@]}" --backend $GPU --samples $NF --warmup $WU --batch 32 --draw-processes $DP --json "$R/gen_b32_drawn_noise32.json"
log "4. paper and released profiles, batch 8"
step 60 "${B[@]}" --backend $GPU --profile paper --samples $N --warmup 8 --batch 8 --json "$R/gen_paper.json"
step 60 "${B[@]}" --backend $GPU --profile released --samples $N --warmup 8 --batch 8 --json "$R/gen_released.json"
log "5. CPU-GPU agreement per profile, size and path"
step 120 "$PY" tests/gpu/gpu_figures.py parity "$M" "$R/parity.json" --samples $NP
log "6. TumorSynthesisd on CUDA tensors (issue 15)"
step 60 "$PY" tests/gpu/gpu_figures.py transform "$R/transform.json"
log "7. writers into local Zarr shards sharing the GPU: 1, 2, 4, 8 processes of bench generate --no-ray, each 1/n of it"
for n in 1 2 4 8; do
  share=$("$PY" -c "print(round(1 / $n, 4) if '$GPU' == 'cupy' else 0)")
  step 90 bash -c "for k in \$(seq $n); do ${TF[*]} bench generate --no-ray --backend $GPU --gpus-per-actor $share --formats zarr --manifest $M --allow-root $WORK --samples $NW --samples-per-shard 32 --json $R/writers${n}_\$k.json >/dev/null 2>&1 & done; wait"
done
log "8. bench generator --backend numpy on this machine's CPU, for the ratio"
step 60 "${B[@]}" --backend numpy --samples 16 --warmup 2 --json "$R/gen_numpy.json"

log "SUMMARY"
"$PY" - "$R" "$OUT/figures.json" <<'PY'
import glob, json, os, sys
res, out = sys.argv[1], sys.argv[2]
allr = {os.path.basename(p)[:-5]: json.load(open(p)) for p in sorted(glob.glob(os.path.join(res, "*.json")))}
json.dump(allr, open(out, "w"), indent=1)
for name, r in allr.items():
    if name.startswith("gen_"):
        print(f"{name:16s} {r['crops_per_second']:9.2f} crops/s, synthesis alone "
              f"{r.get('synthesis_crops_per_second', 0):9.2f}  batch {r.get('batch')} kernels "
              f"{r.get('kernels')}  ms/crop " + ", ".join(f"{k} {v:.3f}" for k, v in r["ms_per_crop"].items()))
    elif name == "parity":
        print("parity:", r["summary"])
        for row in r["rows"]:
            print("  ", json.dumps(row))
    elif name.startswith("writers"):
        print(f"{name:12s} {r.get('in_process_samples_per_s_loaded')} samples/s loaded "
              f"({r.get('in_process_samples_per_s')} with load), host ms/crop "
              f"{r.get('host_cpu_ms_per_crop', {}).get('total')}, gpu {r.get('gpu_memory')}, "
              f"largest stage {r.get('largest_stage')}")
    else:
        print(name, json.dumps({k: v for k, v in r.items() if not isinstance(v, list)})[:600])
for n in (1, 2, 4, 8):
    rates = [r.get("in_process_samples_per_s_loaded", 0) for k, r in allr.items() if k.startswith(f"writers{n}_")]
    if rates:
        print(f"writers sharing one GPU: {n} -> {sum(rates):.1f} samples/s together ({len(rates)} reports)")
PY
echo "results in $OUT/figures.json; $(( $(date +%s) - T0 )) s"
