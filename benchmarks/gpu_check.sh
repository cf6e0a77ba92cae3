#!/usr/bin/env bash
# On a lent GPU machine (no network; ../shared/GPU.md): install the wheels benchmarks/gpu_wheels.sh put in
# .whl/, then run the parts named, in order, each under its own time limit so that one slow part cannot spend
# the whole lease. Everything they print and write goes to $OUT (the device tool's folder; ./gpu-results
# elsewhere): <part>.log, the benchmarks' JSON, env.txt.
#
#     bash benchmarks/gpu_check.sh install tests train          # first call: the GPU tests, issue 27's table
#     bash benchmarks/gpu_check.sh install sweep suite          # a second call (a fresh machine is bare)
#
# Parts:
#   install  the carried wheels and this checkout (editable), without touching the machine's torch
#   tests    tests/test_gpu.py (CUDA-graph steps, bf16/fp16, sync-debug epoch, graph latency, NCCL on >= 2 GPUs)
#   train    benchmarks/gpu_train.py: ResNet-20, 50,000 CIFAR-shaped images, batch 128 (targets: fit fp32
#            >= 0.97x the hand eager loop, fit bf16 + reduce-overhead >= 0.9x the hand CUDA-graph loop)
#   sweep    benchmarks/gpu_sweep.py: 32 LeNet-sized jobs, serial against n_jobs=8 (target >= 4x)
#   suite    the whole suite with the GPU present (it must pass on any machine)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
mkdir -p "$out"
python=${PYTHON:-python3}
status=0
# The checkout on the path whether or not its editable install below succeeds (an old setuptools cannot build
# one): the tests and benchmarks start prune-run as `python -m prune_cli.app.cli`.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

part() {  # part NAME SECONDS COMMAND...: run, log, time; a failure is recorded and the next part still runs
    local name=$1 limit=$2
    shift 2
    local started=$SECONDS
    echo "== $name (limit ${limit}s): $*"
    PYTHONUNBUFFERED=1 timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$out/$name.log"
    echo "== $name: exit $rc after $((SECONDS - started)) s"
    [ "$rc" -eq 0 ] || status=1
}

for name in "$@"; do
    case $name in
        install)
            part install 180 "$python" -m pip install -q --no-index --no-deps --no-compile .whl/*.whl
            # the console scripts (prune-run, prune-compare); not needed by the parts below
            "$python" -m pip install -q --no-index --no-deps --no-build-isolation -e . > "$out/editable.log" 2>&1 ||
                echo "(no editable install: $(tail -n 1 "$out/editable.log"); the checkout is on PYTHONPATH)"
            { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
              "$python" -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda,
                  torch.cuda.is_available() and torch.cuda.get_device_name())"
              "$python" -m pip check; } > "$out/env.txt" 2>&1
            cat "$out/env.txt" ;;
        tests)
            part tests 420 "$python" -m pytest -q -n 4 -rfs -p no:cacheprovider tests/test_gpu.py ;;
        train)
            part train 420 "$python" benchmarks/gpu_train.py --arch resnet20 --n 50000 --batch 128 --epochs 2 \
                --tag gpu
            cp benchmarks/results/gpu_train_gpu.json "$out/" 2>/dev/null ;;
        sweep)
            part sweep 420 "$python" benchmarks/gpu_sweep.py --repeats 1 --tag gpu
            cp benchmarks/results/gpu_sweep_gpu.json "$out/" 2>/dev/null ;;
        suite)
            part suite 480 "$python" -m pytest -q -n 12 -rf -p no:cacheprovider tests ;;
        *)
            echo "unknown part '$name': install, tests, train, sweep or suite" >&2
            exit 2 ;;
    esac
done
exit $status
