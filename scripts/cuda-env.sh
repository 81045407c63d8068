#!/usr/bin/env bash
# Installs a CUDA compiler (nvcc) from PyPI wheels into a virtual environment and exports
# the variables that a `--features cuda` build of ulmfit and Candle needs. No GPU and no
# system CUDA toolkit are required; the result compiles and links nothing that runs here.
#
# Use: `source scripts/cuda-env.sh` (exports into the current shell), or run it to only
# install. Settings, all optional:
#   ULMFIT_CUDA_VENV   virtual environment folder (default /tmp/cuda-venv)
#
# Every wheel is pinned to CUDA 13.0, including the ones nvidia-cuda-nvcc pulls in
# unpinned (nvvm, crt, runtime): a newer cicc writes a PTX ISA that the 13.0 ptxas and
# the 13.0 drivers (580 series) of the GPU machines reject.

_ulmfit_cuda_env() {
    local venv="${ULMFIT_CUDA_VENV:-/tmp/cuda-venv}"
    local wheels=(
        nvidia-cuda-nvcc==13.0.88
        nvidia-nvvm==13.0.88
        nvidia-cuda-crt==13.0.88
        nvidia-cuda-runtime==13.0.96
        nvidia-cuda-cccl==13.0.85
    )
    local python="${PYTHON:-python3}"

    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv" || return 1
    fi
    local installed
    installed="$("$venv/bin/python" -m pip freeze 2>/dev/null)"
    local wheel missing=0
    for wheel in "${wheels[@]}"; do
        grep -qxF "$wheel" <<<"$installed" || missing=1
    done
    if [ "$missing" = 1 ]; then
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${wheels[@]}" \
            || return 1
    fi

    local root
    root="$("$venv/bin/python" - <<'PY'
import pathlib, site
for base in site.getsitepackages():
    candidate = pathlib.Path(base) / "nvidia" / "cu13"
    if (candidate / "bin" / "nvcc").exists():
        print(candidate)
        break
PY
)"
    if [ -z "$root" ]; then
        echo "cuda-env: no nvidia/cu13/bin/nvcc found in $venv; remove $venv and rerun" >&2
        return 1
    fi

    export CUDA_ROOT="$root" CUDA_PATH="$root" CUDA_HOME="$root"
    export PATH="$root/bin:$PATH"
    # cudarc picks its bindings from this version instead of asking a driver.
    export CUDARC_CUDA_VERSION=13000
    # Candle's own kernels are built for this compute capability (H100/H200).
    export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
    echo "cuda-env: $(nvcc --version | tail -n 1) at $root"
}

_ulmfit_cuda_env
_ulmfit_cuda_env_status=$?
unset -f _ulmfit_cuda_env
if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    return "$_ulmfit_cuda_env_status"
fi
exit "$_ulmfit_cuda_env_status"
