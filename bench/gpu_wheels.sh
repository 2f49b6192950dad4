#!/usr/bin/env bash
# Fetch, on this machine (pip reaches the package registry), the wheels that bench/gpu_run.sh
# installs on the GPU machine: the Python packages the model and bench/model_gpu.py import
# that the GPU machine's image lacks (it has torch, numpy, opencv, scipy, einops, pyyaml, tqdm,
# timm; see /work/.library/device/KINDS.md), for its Python 3.12, at the versions of this
# checkout's .venv. They go to .whl/ (ignored by git; about 3 MB), which a device call carries:
#
#   bash bench/gpu_wheels.sh
#   device run: carry [".whl"], command "bash bench/gpu_run.sh model", then "bash bench/gpu_run.sh training"
#
# spconv (the voxel branch of the VoV model) is not among them: its CUDA wheel alone is 70 MB,
# over the 64 MiB a device call carries, so bench/model_gpu.py reports the VoV rows as skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-.venv/bin/python}
# typing_extensions too: pydantic 2.14 needs a recent one (4.12/4.13 lack Sentinel) and the image's version is unknown
PACKAGES=(pydantic pydantic_core annotated_types typing_inspection typing_extensions simplejpeg)
pins=()
for p in "${PACKAGES[@]}"; do
    pins+=("$p==$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p")")
done
mkdir -p .whl
rm -f .whl/*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${pins[@]}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
ls -l .whl
