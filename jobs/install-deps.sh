#!/usr/bin/env bash
# jobs/install-deps.sh: install the Debian 12 packages this project needs (what `make deps` runs).
# As root it installs whatever is missing; as another user it lists what is missing and how to get it.
# Slurm and munge are installed too when WITH_SLURM=1 (the jobs/ tests need real daemons).
set -eu
packages=(build-essential make pkg-config
          openmpi-bin libopenmpi-dev
          libopenblas-dev libopenblas-openmp-dev libscalapack-openmpi-dev
          libzstd-dev zstd libarchive-dev libjansson-dev
          libsentencepiece-dev sentencepiece
          libdnnl-dev libxxhash-dev gnuplot-nox
          python3 python3-numpy valgrind)
if [ "${WITH_SLURM:-0}" = 1 ]; then packages+=(slurm-wlm munge); fi

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "deps: all ${#packages[@]} Debian packages are installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing Debian packages: ${missing[*]}" >&2
    echo "HINT: run as root: apt-get install -y ${missing[*]}  (or: sudo make deps)" >&2
    exit 1
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
