#!/usr/bin/env bash
# The GPU checks in one run, for a machine with a CUDA GPU and PyTorch already installed
# (on one H100 about 6 minutes for the two benchmarks and 4 for the rest, 12.5 at most, so a
# machine with a 10-minute limit per command takes two calls: PARTs "benchmark benchmark_compiled",
# then "tests cli"; no network needed):
#
#     bash benchmarks/gpu_check.sh [OUTDIR [PART...]]   # logs in OUTDIR (default gpu-check/)
#
# PARTs (default: all four): benchmark, benchmark_compiled, tests, cli. PYTEST_ADDOPTS (pytest's
# own variable) can narrow the tests, e.g. PYTEST_ADDOPTS=tests/nn/test_fast_path.py.
#
# 1. benchmark.txt: benchmarks/train_speed.py --device cuda: the DDPM CIFAR-10 model (35.7M
#    parameters, batch 128) against diffusers' UNet2DModel of the same size, in fp32 (TF32), bf16
#    and bf16 channels-last, and where each network's best configuration spends a step (the 15
#    costliest GPU kernels); benchmark_compiled.txt: both compiled with CUDA graphs
#    (--compile-mode reduce-overhead), in a call of its own.
# 2. tests.txt: the test suite on the GPU machine (the tests that need CUDA run only there;
#    8 processes where pytest-xdist is installed).
# 3. cli.txt: the command line on the GPU: train the digits preset, resume it under torchrun
#    with one process per GPU (NCCL from two GPUs up; one GPU runs a single process), sample;
#    100 steps in fp16 with loss scaling; 300 steps compiled with CUDA graphs, and a sample of them.
# Each part runs under its own time limit, so one that hangs does not take the others down.
# ddpmkit runs from this checkout (src/ on PYTHONPATH, nothing installed). diffusers is an
# optional anchor: where pip cannot reach an index, put its wheel in .whl/ (see README,
# Performance) and it is installed into a temporary folder first.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
shift $(($# > 0))
parts=" ${*:-benchmark benchmark_compiled tests cli} "  # the parts to run (default: all)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

if ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: no CUDA GPU is available to PyTorch here" >&2
    exit 2
fi
mkdir -p "$out"
# wheels in .whl/ whose distribution is not installed already: a folder on PYTHONPATH comes before
# site-packages, so a dependency wheel of another version would shadow the machine's own copy
wheels=()
for w in .whl/*.whl; do
    [ -e "$w" ] || continue
    dist=$(basename "$w"); dist=${dist%%-*}
    "$py" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" 2>/dev/null || wheels+=("$w")
done
if [ ${#wheels[@]} -gt 0 ]; then
    site=$(mktemp -d)
    "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" "${wheels[@]}" || exit 1
    export PYTHONPATH="$PYTHONPATH:$site"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  "$py" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"
  "$py" -c "import diffusers; print('diffusers', diffusers.__version__)" 2>/dev/null || echo "diffusers: not installed"
} | tee "$out/env.txt"

part() {  # part NAME SECONDS COMMAND...: run COMMAND under a time limit, log to OUTDIR/NAME.txt
    local name=$1 limit=$2
    shift 2
    [[ $parts == *" $name "* ]] || return 0
    echo "== $name (limit ${limit} s): $*"
    local t0=$SECONDS
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
}

# eager modes first, so their table is in even if compiling runs out of time
part benchmark 180 "$py" benchmarks/train_speed.py --device cuda --repeats 3 --profile 5
part benchmark_compiled 220 "$py" benchmarks/train_speed.py --device cuda --repeats 2 --compile --compiled-only \
    --compile-mode reduce-overhead
# pytest-xdist (in the GPU image) spreads the tests over 8 processes sharing the GPU
xdist=$("$py" -c "import xdist" 2>/dev/null && echo "-n 8")
part tests 150 "$py" -m pytest -q -p no:cacheprovider --durations=5 $xdist
run=$(mktemp -d)/digits
gpus=$("$py" -c "import torch; print(torch.cuda.device_count())")
part cli 200 bash -c "
    set -e
    $py -m ddpmkit train --preset digits --steps 300 --out $run --no-progress
    $py -m torch.distributed.run --standalone --nproc_per_node $gpus -m ddpmkit train --out $run --resume --steps 400 --no-progress
    $py -m ddpmkit sample $run --num 64 --sampler ddim --steps 20 --labels all --out $out/digits_samples.png --force --no-progress
    $py -m ddpmkit train --preset digits --steps 100 --precision fp16 --out $run-fp16 --no-progress
    $py -m ddpmkit train --preset digits --steps 300 --compile-mode reduce-overhead --out $run-graphs --no-progress
    $py -m ddpmkit sample $run-graphs --num 64 --sampler ddim --steps 20 --labels all --out $out/digits_graphs.png --force --no-progress
    tail -n 2 $run/metrics.jsonl
    ls $run/checkpoints"
[ -f "$out/summary.txt" ] && cat "$out/summary.txt"
