#!/usr/bin/env bash
# perf_analyzer, the reference every benchmark here is measured against, in its own virtualenv
# (.venv-perf): the C++ binary inside the tritonclient 2.51 wheel (newer binaries need glibc 2.38),
# the CUDA runtime library it links against, and apt's libb64.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! ldconfig -p | grep -q libb64.so.0d; then
    if [[ $(id -u) -eq 0 ]]; then
        apt-get install -y -qq libb64-0d >/dev/null || { apt-get update -qq && apt-get install -y -qq libb64-0d >/dev/null; }
    else
        echo "setup_perf_analyzer.sh: install libb64-0d with apt first (needs root)" >&2
        exit 2
    fi
fi
python3 -m venv .venv-perf
.venv-perf/bin/python -m pip install --quiet "tritonclient[all]==2.51.0" nvidia-cuda-runtime-cu12
echo "perf_analyzer ready: .venv-perf/bin/perf_analyzer"
