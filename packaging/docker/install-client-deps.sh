#!/usr/bin/env bash
# Install what the flowerdemo desktop client needs to show its window on an X server (the Qt xcb
# platform): the system libraries and fonts through apt, then the client itself through pip.
# The booth container's Dockerfile runs this script; CI runs the same script, so the list below
# is tested where it is used. Safe to run again: apt installs only what is missing, pip reinstalls
# the same version.
#
#   install-client-deps.sh [--no-apt] [--no-pip] [--venv DIR] [--source DIR] [--clean]
#                          [--print-apt-packages]
#
#   --no-apt              skip the apt part (not root, or the libraries are already there)
#   --no-pip              skip the pip part
#   --venv DIR            install the client into the virtualenv DIR, created when missing
#                         (default: the python3 on PATH)
#   --source DIR          the flowerdemo source tree to install (default: this checkout)
#   --clean               remove apt's package lists and pip's cache afterwards (image builds)
#   --print-apt-packages  print the apt package list, one a line, and exit
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source_dir="$(cd "$here/../.." && pwd)"
# One list for both readers: this script installs it, and the app names a missing package from it.
package_list="$here/../../flowerdemo/platform_packages.txt"
[[ -f "$package_list" ]] || { echo "install-client-deps.sh: $package_list is missing" >&2; exit 2; }
# The first word of each line that is not a comment; Debian 12 (bookworm) names.
mapfile -t apt_packages < <(sed -e 's/#.*//' "$package_list" | awk 'NF { print $1 }')
do_apt=1
do_pip=1
venv=""
clean=0

fail() { echo "install-client-deps.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-apt) do_apt=0; shift ;;
        --no-pip) do_pip=0; shift ;;
        --venv) [[ $# -ge 2 ]] || fail "--venv needs a folder"; venv="$2"; shift 2 ;;
        --source) [[ $# -ge 2 ]] || fail "--source needs a folder"; source_dir="$2"; shift 2 ;;
        --clean) clean=1; shift ;;
        --print-apt-packages) printf '%s\n' "${apt_packages[@]}"; exit 0 ;;
        -h|--help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) fail "unknown argument '$1' (try --help)" ;;
    esac
done

if [[ $do_apt -eq 1 ]]; then
    [[ $(id -u) -eq 0 ]] || fail "the apt part needs root: run as root, or pass --no-apt"
    missing=()
    for package in "${apt_packages[@]}"; do
        status="$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)"
        [[ "$status" == "installed" ]] || missing+=("$package")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "apt: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
    else
        echo "apt: all ${#apt_packages[@]} packages already installed"
    fi
    if [[ $clean -eq 1 ]]; then
        apt-get clean
        rm -rf /var/lib/apt/lists/*
    fi
fi

if [[ $do_pip -eq 1 ]]; then
    [[ -f "$source_dir/pyproject.toml" ]] || fail "--source $source_dir: no pyproject.toml there"
    if [[ -n "$venv" ]]; then
        if [[ ! -x "$venv/bin/python" ]]; then
            python3 -m venv "$venv"
        fi
        python="$venv/bin/python"
    else
        python="python3"
    fi
    pip_args=(install --disable-pip-version-check --quiet)
    [[ $clean -eq 1 ]] && pip_args+=(--no-cache-dir)
    # The client only: the serve extra (Triton, Envoy, ONNX Runtime) belongs on the servers.
    "$python" -m pip "${pip_args[@]}" "$source_dir"
    "$python" -m pip show --disable-pip-version-check flowerdemo | sed -n '1,2p'
fi
