#!/usr/bin/env bash
# The GPU check, in one command on a machine with an NVIDIA GPU and CuPy (issue 6):
#   1. tests   the GPU test cases (every test whose name or module says gpu: gradient checks on the GPU,
#              CUDA kernels against their NumPy twin, CPU/GPU agreement, checkpoints across devices)
#   2. configs every shipped config trains one epoch with --device gpu (accuracy and time per epoch), and
#              dltrain profile shows where the MLP's and the CNN's GPU steps spend their time
#   3. bench   benchmarks/gpu.py: dltrain against PyTorch CUDA and a hand-written CuPy MLP
# Usage:  bash benchmarks/gpu_check.sh [tests] [configs] [bench]      (default: all three)
# With a 10-minute limit per command, run it as two commands on one warm machine: `tests configs`, then `bench`
# (each a few minutes; device.txt records how long each stage took). Limits in seconds: GPU_CHECK_TEST_LIMIT (300),
# GPU_CHECK_CONFIG_LIMIT (120 a config), GPU_CHECK_BENCH_LIMIT (420); GPU_BENCH_ARGS goes to gpu.py (--reps 1).
# Writes 7 files (the device tool returns 8 at most): device.txt, tests.log, configs.md, configs.log, profile.txt,
# bench.log and RESULTS.md (benchmarks/RESULTS.md with the GPU section), to $OUT (the device tool's output folder)
# or ./gpu_check_out. Prepare here first: bash benchmarks/gpu_prepare.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_check_out}
mkdir -p "$out"
stages=${*:-tests configs bench}
GPU_BENCH_ARGS=${GPU_BENCH_ARGS:-}
device=${GPU_CHECK_DEVICE:-gpu}  # GPU_CHECK_DEVICE=cpu smoke-tests this script on a machine without a GPU
status=0

if [ -d .whl ] && ! python3 -c "import pydantic" 2>/dev/null; then  # the image lacks pydantic
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
    || export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
[ -d .gpu_data ] && export DLTRAIN_DATA=$PWD/.gpu_data
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
python3 -m dltrain devices 2>&1 | tee -a "$out/device.txt"
python3 -c "from dltrain import backend; print('dltrain uses:', backend.resolve_device('$device'))" \
    | tee -a "$out/device.txt" || exit 1

for stage in $stages; do
    stage_started=$SECONDS
    case $stage in
    tests)
        # the real-GPU cases only: the stand-in GPU and the kernels compiled for the CPU ran in CI already
        workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n ${GPU_CHECK_WORKERS:-8}")  # one GPU, many processes
        timeout "${GPU_CHECK_TEST_LIMIT:-300}" python3 -m pytest -q $workers --durations=15 \
            -k "gpu and not stand-in and not cuda-on-cpu" -p no:cacheprovider tests 2>&1 | tee "$out/tests.log"
        [ "${PIPESTATUS[0]}" = 0 ] || status=1
        ;;
    configs)
        : > "$out/configs.log"; : > "$out/profile.txt"
        echo "| config | epochs | test accuracy | seconds per epoch | samples/s |" > "$out/configs.md"
        echo "|---|---|---|---|---|" >> "$out/configs.md"
        for config in ${GPU_CHECK_CONFIGS:-configs/*.yaml}; do
            name=$(basename "$config" .yaml)
            run=/tmp/gpu_runs/$name
            rm -rf "$run"
            extra=()
            [[ $name == wordlists_* && -d .gpu_data/dict ]] && extra=(--set "data.path=$PWD/.gpu_data/dict")
            echo "== $name" >> "$out/configs.log"
            if timeout "${GPU_CHECK_CONFIG_LIMIT:-120}" python3 -m dltrain train "$config" --device "$device" --run-dir "$run" --quiet \
                    --set training.epochs=1 "${extra[@]}" >> "$out/configs.log" 2>&1; then
                python3 - "$run" "$name" >> "$out/configs.md" <<'PY'
import json, sys
run, name = sys.argv[1:]
s = json.load(open(f"{run}/summary.json"))
rows = open(f"{run}/metrics.csv").read().splitlines()[1:]
seconds = float(rows[-1].split(",")[-1])
acc = s.get("test_accuracy")
print(f"| {name} | {s['epochs_run']} | {'' if acc is None else f'{acc:.4f}'} | {seconds:.2f} | "
      f"{s['train_samples_per_second']:,.0f} |")
PY
            else
                echo "| $name | failed: see configs.log | | | |" >> "$out/configs.md"
                status=1
            fi
        done
        cat "$out/configs.md"
        for name in fashion_mlp fashion_cnn; do  # where the GPU step's time goes, part by part
            timeout 120 python3 -m dltrain profile "configs/$name.yaml" --device "$device" --steps 10 \
                >> "$out/profile.txt" 2>&1 || status=1
        done
        cat "$out/profile.txt"
        ;;
    bench)
        cp benchmarks/RESULTS.md "$out/RESULTS.md"
        timeout "${GPU_CHECK_BENCH_LIMIT:-420}" python3 benchmarks/gpu.py --out "$out/RESULTS.md" $GPU_BENCH_ARGS \
            2>&1 | tee "$out/bench.log"
        [ "${PIPESTATUS[0]}" = 0 ] || status=1
        ;;
    *) echo "unknown stage $stage (expected tests, configs or bench)"; exit 2 ;;
    esac
    echo "stage $stage took $((SECONDS - stage_started)) s" | tee -a "$out/device.txt"
done
exit $status
