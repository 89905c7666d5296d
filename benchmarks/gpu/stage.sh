#!/usr/bin/env bash
# On the GPU machine: unpack the carried part folder (.gpu-a, .gpu-b or .gpu-c) into
# $FLOWERDEMO_GPU_HOME (default /opt/flowerdemo-gpu), check what is there and print it.
#   bash benchmarks/gpu/stage.sh .gpu-a                      # first call: keeps the pieces
#   bash benchmarks/gpu/stage.sh .gpu-b --require-complete   # exits 1 unless all is ready
# Options after the folder go to stage.py (--home, --python, --extra-site, --require-complete).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ $# -lt 1 ]]; then
    echo "usage: $0 PART_DIR [--require-complete] [--home DIR] [--python PYTHON]" >&2
    exit 2
fi
python="${FLOWERDEMO_STAGE_PYTHON:-python3}"
echo "stage: $(date -u +%FT%TZ) on $(hostname), $("$python" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
exec "$python" "$here/stage.py" "$@"
