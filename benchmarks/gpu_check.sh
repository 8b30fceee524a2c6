#!/usr/bin/env bash
# The GPU check: every CUDA path of the codebase and its throughput, in one run of under 8 minutes on one
# H100/H200-class GPU, written to ${OUT:-gpu_check_out}/report.json and report.md (device, date, versions,
# each step's status, time and key figures; step logs in steps/).
#
#   bash benchmarks/gpu_check.sh                       # on a machine with a CUDA GPU
#   OUT=/somewhere bash benchmarks/gpu_check.sh
#   GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh   # or --dry-run: the same steps on the CPU, minimal (CI)
#
# Steps, each under its own timeout (seconds, GPU mode: 430 in all, with at most 30 for the environment and
# a few for the report: under 8 minutes); a failure or a timeout never stops the others, and the report
# says which steps passed, failed or timed out:
#   1 pytest         pytest -m cuda tests (tests/test_cuda.py: every CUDA path once)                   170
#   2 bench_step     bench_step.py on cuda, eager: teacher_train/off|on, kd/default|on|off|amp|
#                    channels_last, crd/default, cka_group/default, semckd/default, loaders, breakdown   80
#   3 bench_compile  bench_step.py on cuda: kd/on under torch.compile(mode="reduce-overhead")           80
#   4 torchrun       generated CIFAR-100-format data and a 1-epoch teacher in a temporary folder, then
#                    torchrun --nproc-per-node 1 train_student.py --dist-backend nccl --dali gpu          50
#   5 bench_group    bench_group.py on cuda at K = 1, 8, 17                                             50
# The dry run: CUDA hidden, pytest --collect-only -m cuda and the cuda tests run (all must be collected
# and skipped), bench_step and bench_group --smoke (compile off), the torchrun step with gloo, --dali cpu
# and one tiny epoch, the report.
# Exit code: 0 when every step passed, 1 otherwise, 2 on a usage error or without a GPU outside the dry run.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=${GPU_CHECK_DRY_RUN:-0}
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown argument $arg (the only one is --dry-run)" >&2; exit 2 ;;
    esac
done
[ "$DRY" = 0 ] || DRY=1
export OUT=${OUT:-gpu_check_out} PYTHONUNBUFFERED=1 DRY
export PY=${PYTHON:-python}
export WORK; WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
STARTED=$(date +%s.%N)
rm -rf "$OUT/steps"
mkdir -p "$OUT/steps"

if [ "$DRY" = 1 ]; then
    export CUDA_VISIBLE_DEVICES=""  # the CPU, even on a machine with a GPU
    export DEVICE=cpu BACKEND=gloo DALI=cpu
    export BENCH_SIZE="--smoke" GROUP_SIZE="--smoke" GROUP_KS=1,2
    export TR_DATA="--n_train 128 --n_test 64" TR_TEACHER=resnet8 TR_STUDENT=resnet8 TR_EPOCHS=1 TR_BATCH=32
    T_PYTEST=150 T_STEP=150 T_COMPILE=120 T_TORCHRUN=150 T_GROUP=120
else
    export DEVICE=cuda BACKEND=nccl DALI=gpu
    export BENCH_SIZE="--iters 50 --repeats 3 --warmup 20" GROUP_SIZE="--iters 30 --repeats 3" GROUP_KS=1,8,17
    export TR_DATA="--n_train 5000 --n_test 1000" TR_TEACHER=resnet32x4 TR_STUDENT=resnet8x4 TR_EPOCHS=2 TR_BATCH=64
    T_PYTEST=170 T_STEP=80 T_COMPILE=80 T_TORCHRUN=50 T_GROUP=50
fi

run_step() {  # name timeout_s function: runs it under `timeout`, records rc, seconds and the command
    local name=$1 limit=$2 fn=$3 t0 t1 rc
    echo "==> [$name] (timeout ${limit}s) log: $OUT/steps/$name.log"
    declare -f "$fn" | sed '1,2d;$d' | sed 's/^    //' > "$OUT/steps/$name.cmd"
    t0=$(date +%s.%N)
    timeout -k 5 "$limit" bash -c "$fn" > "$OUT/steps/$name.log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    echo "rc=$rc seconds=$(awk "BEGIN {print $t1 - $t0}") timeout=$limit" > "$OUT/steps/$name.status"
    echo "    exit code $rc after $(awk "BEGIN {printf \"%.0f\", $t1 - $t0}") s"
}

step_pytest() {
    where=tests
    if [ "$DRY" = 1 ]; then  # collect, then run only the files that hold cuda tests (one collection less)
        "$PY" -m pytest -p no:cacheprovider --collect-only -q -m cuda tests > "$OUT/steps/pytest.collect.txt" || exit $?
        where=$(grep '::' "$OUT/steps/pytest.collect.txt" | cut -d: -f1 | sort -u)
    fi
    "$PY" -m pytest -p no:cacheprovider -m cuda $where -v -ra --junitxml="$OUT/steps/pytest.xml"
}

step_bench_step() {
    "$PY" benchmarks/bench_step.py --device "$DEVICE" --compile off $BENCH_SIZE --breakdown \
        --only teacher_train/off,teacher_train/on,kd/default,kd/on,kd/off,kd/amp,kd/channels_last,crd/default,cka_group/default,semckd/default \
        --json "$OUT/bench_step.json"
}

step_bench_compile() {
    if [ "$DRY" = 1 ]; then compile=off; else compile=on; fi  # compiling takes minutes on a CPU
    "$PY" benchmarks/bench_step.py --device "$DEVICE" --compile $compile --compile_mode reduce-overhead \
        $BENCH_SIZE --only kd/on --no_loader --json "$OUT/bench_compile.json"
}

step_torchrun() {
    set -e
    d="$WORK/torchrun"
    "$PY" benchmarks/gpu_check.py data "$d/data" $TR_DATA
    common=(--dataset cifar100 --data_folder "$d/data" --batch_size "$TR_BATCH" --num_workers 4 --device "$DEVICE"
            --save_dir "$d/save" --save_freq 0 --print_freq 0 --trial 0)
    "$PY" train_teacher.py --model "$TR_TEACHER" --epochs 1 "${common[@]}"
    NCCL_DEBUG=INFO "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 train_student.py \
        --path_t "$d/save/teachers/models/${TR_TEACHER}_vanilla_cifar100_trial_0/${TR_TEACHER}_best.pth" \
        --model_s "$TR_STUDENT" --distill kd -c 0.1 -d 0.9 --epochs "$TR_EPOCHS" --dist-backend "$BACKEND" \
        --dali "$DALI" "${common[@]}"
    mkdir -p "$OUT/steps/torchrun"
    cp "$d"/save/students/models/*/{summary.json,parameters.json,metrics.jsonl} "$OUT/steps/torchrun/"
}

step_bench_group() {
    "$PY" benchmarks/bench_group.py --device "$DEVICE" --ks "$GROUP_KS" $GROUP_SIZE --json "$OUT/bench_group.json"
}
export -f step_pytest step_bench_step step_bench_compile step_torchrun step_bench_group

timeout 30 "$PY" benchmarks/gpu_check.py env "$OUT/env.json" $([ "$DRY" = 1 ] && echo --dry-run) || exit 2
run_step pytest "$T_PYTEST" step_pytest
run_step bench_step "$T_STEP" step_bench_step
run_step bench_compile "$T_COMPILE" step_bench_compile
run_step torchrun "$T_TORCHRUN" step_torchrun
run_step bench_group "$T_GROUP" step_bench_group
"$PY" benchmarks/gpu_check.py report "$OUT" --started "$STARTED" $([ "$DRY" = 1 ] && echo --dry-run)
