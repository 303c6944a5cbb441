#!/usr/bin/env bash
# The GPU checks, as one script for a lent H100/H200 (see docs/performance.md). Run from the repo
# root with the wheels of the packages the GPU image lacks in .whl/ and test slides in
# .device/slides/; results go to $OUT (or ./gpu_check_out).
set -uo pipefail
out=${OUT:-gpu_check_out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HNM_TEST_SLIDES=$PWD/.device/slides
nvidia-smi -L | tee "$out/gpu.txt"
git rev-parse --short HEAD 2>/dev/null | tee -a "$out/gpu.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" -m gpu tests 2>&1 | tee "$out/gpu_tests.log"
timeout 200 python3 bench/bench_extract.py --gpu-only --json "$out/bench_extract.json" 2>&1 | tee "$out/bench_extract.log"
timeout 200 python3 bench/bench_extract.py --gpu-only --compile --json "$out/bench_extract_compiled.json" \
    2>&1 | tee "$out/bench_extract_compiled.log"
timeout 120 python3 bench/bench_mil.py --devices cuda --epochs 3 --img-per-s 20000 2>&1 | tee "$out/bench_mil.log"
timeout 150 python3 bench/bench_finetune.py --arch resnet18 --patch 224 --slides 8 --slide-px 4096 \
    --batch-size 512 --device cuda --workers 14 --threads 0 --repeats 1 --timed-epochs 1 \
    2>&1 | tee "$out/bench_finetune.log"
