#!/usr/bin/env bash
# On a machine with the package index: the wheels a GPU machine without network lacks (../shared/GPU.md lists
# what the reference machine has: torch, torchvision, pytest, matplotlib, scikit-learn, ...), into .whl/ (git
# ignores it; the device tool carries it: carry=[".whl"]). Then, on the GPU machine: benchmarks/gpu_check.sh.
#
#     bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]      # default 3.12, the reference machine's
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-3.12}
python=${PYTHON:-python3}
mkdir -p .whl
# hydra-core and torchao at pyproject's lower bounds, the versions CI's second environment tests with the
# reference machine's torch 2.11; everything pure Python but rpds-py, which is fetched for $version.
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    hydra-core==1.3.2 omegaconf==2.3.0 torch-pruning==1.6.1 torchao==0.18.0 \
    hydra-joblib-launcher==1.2.0 hydra-submitit-launcher==1.2.0 submitit==1.5.4 cloudpickle \
    jsonschema referencing jsonschema-specifications rpds-py attrs
"$python" -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3  # only a source release upstream
du -sh .whl && ls .whl
