#!/usr/bin/env bash
# GPU check (issue 28): what tfkd's GPU paths do on a GPU machine, stored as one report directory.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # default: benchmarks/reports/gpu_check/<UTC time>
#
# Run from the repository root on a machine with a GPU (it refuses to run without one). It measures:
#   devices.txt        TensorFlow's version, its GPUs and their compute capability; nvidia-smi.
#   engine_speed.txt   benchmarks/engine_speed.py: student training images/s of tfkd's trainer
#                      (float32, mixed_float16, mixed_bfloat16, each with and without XLA) beside
#                      a plain Keras fit of the same model and recipe, in one process.
#   step_speed.txt     benchmarks/student_step_speed.py 64 256 1024: seconds per epoch by batch size.
#   main_default/      the README's main command (launch/distill.py, default flags): its
#                      report.json and log (teacher trained into the work dir, served over gRPC).
#   main_mixed/        the same with --mixed_precision=mixed_float16 --jit_compile.
#   summary.txt        accuracies, student training seconds and images/s of both main runs.
# Every step writes its output as it finishes; a failed step is logged in summary.txt and the
# others still run. Nothing here is needed on CPU machines (tests cover the same paths on CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/reports/gpu_check/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export TF_CPP_MIN_LOG_LEVEL=2

"$PY" - > "$OUT/devices.txt" 2>&1 <<'PYEOF'
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
print("tensorflow", tf.__version__)
for gpu in gpus:
    print(gpu.name, tf.config.experimental.get_device_details(gpu))
raise SystemExit(0 if gpus else "no GPU: gpu_check.sh measures GPU paths only")
PYEOF
if [ $? -ne 0 ]; then cat "$OUT/devices.txt"; exit 1; fi
nvidia-smi >> "$OUT/devices.txt" 2>&1 || true

step() {  # step NAME COMMAND...: runs it, logs its status and seconds to summary.txt
  local name="$1"; shift
  local start=$SECONDS
  "$@"
  local rc=$?
  echo "$name: rc $rc, $((SECONDS - start)) s" >> "$OUT/summary.txt"
}

step engine_speed sh -c "'$PY' benchmarks/engine_speed.py --repeats=2 \
  --variants=float32+xla,mixed_float16,mixed_float16+xla,mixed_bfloat16,mixed_bfloat16+xla \
  > '$OUT/engine_speed.txt' 2>&1"
step step_speed sh -c "'$PY' benchmarks/student_step_speed.py 64 256 1024 > '$OUT/step_speed.txt' 2>&1"
WORK="$(mktemp -d)"
for run in default mixed; do
  extra=()
  [ "$run" = mixed ] && extra=(--mixed_precision=mixed_float16 --jit_compile)
  mkdir -p "$OUT/main_$run"
  step "main_$run" sh -c "'$PY' launch/distill.py --workdir='$WORK/$run' --verbose=2 ${extra[*]:-} \
    > '$OUT/main_$run/log.txt' 2>&1"
  cp "$WORK/$run/report.json" "$OUT/main_$run/report.json" 2>/dev/null
done
"$PY" - "$OUT" >> "$OUT/summary.txt" 2>&1 <<'PYEOF'
import json, os, sys
for run in ("default", "mixed"):
    path = os.path.join(sys.argv[1], f"main_{run}", "report.json")
    if not os.path.exists(path):
        print(f"main_{run}: no report"); continue
    r = json.load(open(path))
    steps, seconds = r["student_steps"], r["stage_seconds"]["student_training"]
    print(f"main_{run}: student {100 * r['student_accuracy']:.2f}%, teacher "
          f"{100 * (r['teacher_accuracy'] or 0):.2f}%, student training {seconds:.1f} s, "
          f"{steps * r['student_global_batch'] / seconds:,.0f} images/s, "
          f"{r['student_recipe']['mixed_precision']}, replicas {r['replicas']}")
PYEOF
cat "$OUT/summary.txt"
