#!/usr/bin/env bash
# Every check that needs a GPU, as one command of at most 8 minutes on an H100/H200:
#
#   benchmarks/gpu_check.sh REPORT_DIR            # on the GPU machine, from the repository root
#   benchmarks/gpu_check.sh REPORT_DIR --cpu      # a short rehearsal of the same stages on a CPU
#   benchmarks/gpu_check.sh REPORT_DIR --dry-run  # print the stages' commands, run nothing
#
# Stages, in this order (each with a time limit; one that would not fit in what is left of the
# 8 minutes is skipped, and says so):
#   1. versions: Python, torch, Triton, CUDA, driver, the GPU's name, compute-sanitizer, commit;
#   2. the GPU tests: pytest -m gpu tests/test_gpu.py tests/test_graves_lstm.py
#      tests/test_bn_lstm.py;
#   3. the optimizer benchmark, benchmarks/optimizer_step.py, alone on the machine; it writes
#      benchmarks/results/optimizer_step_<gpu>.md (copied into REPORT_DIR);
#   4. side by side, to fit the 8 minutes:
#      - compute-sanitizer memcheck on a reduced set of the GPU tests (the eager ones with
#        torch's caching allocator off, so that a stale pointer reaches freed memory; the CUDA
#        graph ones with it on, as capture needs) and on a short run of the benchmark;
#      - every reproduction's smoke config for a short run on the GPU (repro fit ...
#        --trainer.accelerator gpu --trainer.max_steps N --trainer.logger false), with its
#        training steps per second (benchmarks/steps_per_second.py): a floor, since these runs
#        share the machine with each other and with the sanitizer;
#   5. benchmarks/loop_overhead.py --quick --rounds 1 and benchmarks/graves_lstm_speed.py, alone
#      (on a CPU the handwriting layer at 100 steps only).
#
# REPORT_DIR gets report.md (each stage's status and time, the versions, the steps per second)
# and one log per stage, 7 files in all.
#
# Dependencies. The GPU machine (Python 3.12, torch 2.11, Triton 3.6) has pytest,
# pytest-timeout, hypothesis and Lightning, which stages 1-4 need, but lacks jsonargparse,
# omegaconf, mlxtend, Hershey-Fonts and wandb, which `repro fit` imports (stage 5 is skipped
# without them, and says which are missing). Bring them as wheels: once, on a machine with pip
# and the internet, in the repository root (the versions are those this project was tested with;
# the second line is what they need that the GPU machine's image lacks):
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux1_x86_64 -d .whl \
#     jsonargparse==4.53.0 omegaconf==2.4.0 mlxtend==0.25.0 Hershey-Fonts==2.1.0 wandb==0.31.0 \
#     docstring-parser==0.18.0 typeshed-client==2.15.0 pydantic==2.13.4 pydantic-core==2.46.4 \
#     annotated-types==0.7.0 typing-inspection==0.4.2 platformdirs==4.14.8 distro==1.9.0 \
#     sniffio==1.3.1 cwevals==0.0.1b1 googleapis-common-protos==1.76.0 \
#     opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2 \
#     opentelemetry-exporter-otlp-proto-http==1.45.2 \
#     opentelemetry-exporter-otlp-proto-common==1.45.2 \
#     opentelemetry-exporter-otlp-common==0.66b2 opentelemetry-exporter-http-transport==0.66b2 \
#     opentelemetry-semantic-conventions==0.66b2
#
# (if pip finds no matching distribution for one, add --platform manylinux_2_N_x86_64 for the N
# it needs: pip matches N exactly). Then carry .whl to the GPU machine beside the checkout (the
# device tool: carry [".whl"]); this script installs them into a folder of its own on start.
# A pure-Python wheel of another version does as well; keep one version of each.

set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

usage() { echo "usage: $0 REPORT_DIR [--cpu | --dry-run]" >&2; exit 2; }
[[ $# -ge 1 && $1 != -* ]] || usage
REPORT=$1
MODE=${2:-gpu}
case $MODE in gpu | --cpu | --dry-run) ;; *) usage ;; esac
mkdir -p "$REPORT" || exit 1
REPORT=$(cd "$REPORT" && pwd)
PYTHON=${PYTHON:-python3}
START=$SECONDS
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)  # the side-by-side stages' logs and every status row
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled WANDB_SILENT=true
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the checkout, not installed there

if [[ $MODE == --cpu ]]; then  # the rehearsal: same stages, CPU settings, a few steps each
    ACCELERATOR=cpu SMOKE_STEPS=15 SMOKE_LIMIT=150 BUDGET=${GPU_CHECK_BUDGET_S:-1200}
    SMOKE=()  # one after the other: a CPU has too few cores to run five side by side
    BENCH_ARGS=(--quick --repeats 3 --warmup 1 --contenders "torch foreach,ours (default)"
        --out "$REPORT/optimizer_step_cpu_rehearsal.md")
    LSTM_SPEED_ARGS=(--sizes handwriting --steps 100 --repeats 1)
else
    ACCELERATOR=gpu SMOKE_STEPS=40 SMOKE_LIMIT=90 SMOKE=(side_by_side)
    BUDGET=${GPU_CHECK_BUDGET_S:-470}  # 8 minutes, less the machine's start and a margin
    BENCH_ARGS=(--repeats 100)
    LSTM_SPEED_ARGS=(--repeats 1)
fi

if compgen -G ".whl/*.whl" > /dev/null && [[ $MODE != --dry-run ]]; then
    SITE=$(mktemp -d /tmp/gpu-check-site.XXXXXX)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi

STAGES=0
# side_by_side run ...: start a run in the background, keeping its place in the report's table
side_by_side() {
    STAGES=$((STAGES + 1))
    ROW=$STAGES "$@" &
}

# note STATUS NAME: a row of report.md's table, in the order the stages were started.
note() {
    STAGES=$((STAGES + 1))
    printf '%03d| %s | %s | 0 |\n' "$STAGES" "$2" "$1" >> "$WORK/rows"
}

# run NAME LIMIT_S LOG COMMAND...: run a stage under a time limit (cut to what is left of the
# budget), appending its output to LOG, and record its status and time in row ROW of the
# report's table (by default the next).
run() {
    local name=$1 limit=$2 log=$3 row=${ROW:-$((STAGES += 1))}
    shift 3
    local left=$((BUDGET - (SECONDS - START)))
    if [[ $MODE == --dry-run ]]; then
        echo "[$name] $(printf '%q ' "$@")"
        return 0
    fi
    if ((left < 20)); then
        printf '%03d| %s | skipped: out of time | 0 |\n' "$row" "$name" >> "$WORK/rows"
        return 1
    fi
    ((limit > left)) && limit=$left
    local began=$SECONDS status
    echo "=== $name: $*" >> "$log"
    timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
    local rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status="timed out after ${limit} s" ;;
        *) status="failed (exit $rc)" ;;
    esac
    printf '%03d| %s | %s | %d |\n' "$row" "$name" "$status" $((SECONDS - began)) >> "$WORK/rows"
    echo "=== $name: $status" >> "$log"
    return $rc
}

# 1. versions
VERSIONS="$REPORT/versions.txt"
run versions 30 "$VERSIONS" "$PYTHON" -c '
import platform, subprocess, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
try:
    import triton; print("triton", triton.__version__)
except ImportError:
    print("triton: not installed")
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")
for command in (["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                ["compute-sanitizer", "--version"], ["git", "rev-parse", "HEAD"]):
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=20)
        print(" ".join(command[:1]) + ":", (out.stdout or out.stderr).strip().splitlines()[-1])
    except (OSError, IndexError, subprocess.TimeoutExpired) as error:
        print(command[0] + ":", "not available", type(error).__name__)
'

# 2. the GPU tests
run "GPU tests" 120 "$REPORT/gpu_tests.log" \
    "$PYTHON" -m pytest -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_graves_lstm.py \
    tests/test_bn_lstm.py -rs -q --timeout=240

# 3. the optimizer benchmark
BENCH_LOG="$REPORT/optimizer_step.log"
run "optimizer benchmark" 150 "$BENCH_LOG" "$PYTHON" benchmarks/optimizer_step.py "${BENCH_ARGS[@]}"
if [[ $MODE != --dry-run ]]; then
    table=$(sed -n 's/^written to //p' "$BENCH_LOG" | tail -1)
    [[ -n $table && -f $table && $table != "$REPORT"/* ]] && cp "$table" "$REPORT/"
fi

# 4. side by side: compute-sanitizer memcheck, and the smoke runs
EAGER="training_loop_with_gradients_freed or views_at_odd_offsets or low_precision"
EAGER+=" or matches_reference_on_cuda and (centered_momentum-torch.float64 or bias_correction-torch.float32)"
GRAPHS="captures_in_a_cuda_graph or whole_training_step_captured or captured_before_the_tables"
MEMCHECK=(compute-sanitizer --tool memcheck --error-exitcode 86 --print-limit 20)
if [[ $MODE == --cpu ]]; then
    note "not on a CPU" compute-sanitizer
elif [[ $MODE == gpu ]] && ! compute-sanitizer --version > /dev/null 2>&1; then
    note "not on this machine's PATH" compute-sanitizer
else
    side_by_side run "memcheck: eager GPU tests" 120 "$WORK/memcheck_1.log" \
        env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "${MEMCHECK[@]}" "$PYTHON" -m pytest \
        -p no:cacheprovider -m gpu tests/test_gpu.py -q --timeout=240 -k "$EAGER"
    side_by_side run "memcheck: CUDA graph tests" 120 "$WORK/memcheck_2.log" \
        "${MEMCHECK[@]}" "$PYTHON" -m pytest -p no:cacheprovider -m gpu tests/test_gpu.py -q \
        --timeout=240 -k "$GRAPHS"
    side_by_side run "memcheck: benchmark, short" 120 "$WORK/memcheck_3.log" \
        "${MEMCHECK[@]}" "$PYTHON" benchmarks/optimizer_step.py --quick --repeats 3 --warmup 1 \
        --contenders "ours (default),ours (CUDA graph),torch foreach (CUDA graph)" \
        --out "$WORK/sanitized_benchmark.md"
fi

CONFIGS=(configs/*/smoke.yaml configs/*/*_smoke.yaml)
missing=$("$PYTHON" -c '
import importlib.util
print(" ".join(name for name in ("jsonargparse", "omegaconf", "wandb", "mlxtend", "HersheyFonts")
               if importlib.util.find_spec(name) is None))')
if [[ -n $missing && $MODE != --dry-run ]]; then
    note "skipped: missing $missing (see this script's header)" "smoke runs"
else
    for i in "${!CONFIGS[@]}"; do
        # each in a folder of its own: three of the configs share a checkpoint folder's name
        "${SMOKE[@]}" run "smoke: ${CONFIGS[i]}" "$SMOKE_LIMIT" "$WORK/smoke_$i.log" \
            "$PYTHON" -m reproductions fit -c "${CONFIGS[i]}" \
            --trainer.accelerator "$ACCELERATOR" --trainer.devices 1 \
            --trainer.max_steps "$SMOKE_STEPS" --trainer.logger false \
            --trainer.enable_progress_bar false --trainer.default_root_dir "$WORK/run_$i" \
            --trainer.callbacks+=benchmarks.steps_per_second.StepsPerSecond
    done
fi
wait
cat "$WORK"/memcheck_*.log > "$REPORT/sanitizer.log" 2> /dev/null
# A device the sanitizer does not support (seen under gVisor) is not a memory error
if grep -q "Device not supported" "$REPORT/sanitizer.log" 2> /dev/null; then
    note "this device is not supported by it: no memcheck" compute-sanitizer
fi
SPEEDS=()
for i in "${!CONFIGS[@]}"; do
    [[ -f $WORK/smoke_$i.log ]] || continue
    cat "$WORK/smoke_$i.log" >> "$REPORT/smoke_runs.log"
    speed=$(sed -n 's/^STEPS_PER_SECOND //p' "$WORK/smoke_$i.log" | tail -1)
    SPEEDS+=("| ${CONFIGS[i]} | ${speed:-none: see smoke_runs.log} |")
done

# 5. the loop and LSTM speed benchmarks, short runs on the GPU (their tables go to the log)
run "benchmarks/loop_overhead.py" 60 "$REPORT/speed_benchmarks.log" \
    "$PYTHON" benchmarks/loop_overhead.py --quick --rounds 1 --out -
run "benchmarks/graves_lstm_speed.py" 45 "$REPORT/speed_benchmarks.log" \
    "$PYTHON" benchmarks/graves_lstm_speed.py "${LSTM_SPEED_ARGS[@]}"

[[ $MODE == --dry-run ]] && exit 0
{
    echo "# GPU check ($(date -u +%Y-%m-%d), ${MODE#--}, $((SECONDS - START)) s)"
    echo
    sed 's/^/    /' "$VERSIONS" 2> /dev/null | grep -v "^    ===" 
    echo
    echo "| stage | status | s |"
    echo "|---|---|---|"
    sort "$WORK/rows" | cut -c4-
    if ((${#SPEEDS[@]})); then
        echo
        echo "Smoke runs, $SMOKE_STEPS steps each (steps per second after the first 10 batches; on"
        echo "a GPU side by side with each other and the sanitizer, so a floor):"
        echo
        echo "| config | speed |"
        echo "|---|---|"
        printf '%s\n' "${SPEEDS[@]}"
    fi
} > "$REPORT/report.md"
rm -rf "$VERSIONS" "$WORK"
cat "$REPORT/report.md"
! grep -q "failed\|timed out" "$REPORT/report.md"
