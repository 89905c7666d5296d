#!/usr/bin/env bash
# One-folder frozen build of the flowerdemo client with PyInstaller.
#
#   packaging/pyinstaller/build.sh [--venv DIR]
#
# Makes (or reuses) a separate virtualenv (default .venv-freeze in the repository root) with
# PyInstaller and the client, then builds dist/flowerdemo/flowerdemo (work files in build/).
# Prints the time taken and the folder's size.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repository="$(cd "$here/../.." && pwd)"
venv="$repository/.venv-freeze"
pyinstaller_version="6.22.3"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --venv) [[ $# -ge 2 ]] || { echo "build.sh: --venv needs a folder" >&2; exit 2; }
                venv="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "build.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done

started=$SECONDS
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --disable-pip-version-check --quiet \
    "pyinstaller==$pyinstaller_version" "$repository"
installed=$SECONDS

cd "$repository"
"$venv/bin/pyinstaller" --noconfirm --clean --log-level WARN \
    --distpath "$repository/dist" --workpath "$repository/build/pyinstaller" \
    "$here/flowerdemo.spec"
finished=$SECONDS

echo "frozen build: dist/flowerdemo ($(du -sh "$repository/dist/flowerdemo" | cut -f1)); " \
     "install $((installed - started)) s, PyInstaller $((finished - installed)) s"
