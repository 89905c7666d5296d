"""Unpack the carried GPU payload into one folder on the GPU machine, check it, say what is there.

Run through `benchmarks/gpu/stage.sh PART_DIR` once per device call (see README.md here). Each
call carries one part folder (.gpu-a, .gpu-b, .gpu-c, built by pack.sh). Every part folder holds
the same MANIFEST.json; the payload (one tar of compressed members) is split into pieces spread
over the parts. Pieces are kept in HOME/incoming until all have come; then the payload is joined,
checked against its SHA-256 and installed:

    HOME/triton/pytriton/tritonserver/...   tritonserver, Python backend, the stub for this Python
    HOME/triton/nvidia_pytriton.libs/       the libraries they link against
    HOME/bin/envoy                          Envoy
    HOME/site/                              numpy<2, tritonclient, grpcio, protobuf, ... (wheels)
    HOME/perf/perf_analyzer, HOME/perf/lib/ perf_analyzer with libcudart.so.12 and libb64
    HOME/venv/                              a venv of the machine's python3: HOME/site first (so
                                            numpy<2 wins), then HOME/triton, then the machine's
                                            own site-packages (torch); Triton's stub uses it
    HOME/env.sh                             PATH etc. for a shell; run_gpu_bench.py needs none

HOME survives between calls only while the machine stays warm (30 s after a call).
Uses the standard library only (it runs under the machine's python3 before anything is set up).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

DEFAULT_HOME = "/opt/flowerdemo-gpu"
MEMBERS = ("triton.tar.xz", "envoy.xz", "pylibs.tar.xz", "perf.tar.xz")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def say(text: str) -> None:
    print(f"stage: {text}", flush=True)


def copy_pieces(part_dir: Path, manifest: dict, incoming: Path) -> list[str]:
    copied = []
    for piece in manifest["payload"]["pieces"]:
        source = part_dir / piece["name"]
        if not source.is_file():
            continue
        if sha256(source) != piece["sha256"]:
            raise SystemExit(f"stage: {source} is damaged (SHA-256 differs from the manifest)")
        incoming.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, incoming / piece["name"])
        copied.append(piece["name"])
    for name in manifest.get("weights", []):
        source = part_dir / "weights" / name
        if source.is_file():
            (incoming.parent / "weights").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, incoming.parent / "weights" / name)
            copied.append(f"weights/{name}")
    return copied


def missing_pieces(manifest: dict, incoming: Path) -> list[dict]:
    return [p for p in manifest["payload"]["pieces"] if not (incoming / p["name"]).is_file()]


def install_payload(manifest: dict, home: Path) -> None:
    incoming = home / "incoming"
    joined = incoming / "payload.tar"
    with joined.open("wb") as out:
        for piece in manifest["payload"]["pieces"]:
            with (incoming / piece["name"]).open("rb") as part:
                shutil.copyfileobj(part, out, 1 << 20)
    if sha256(joined) != manifest["payload"]["sha256"]:
        raise SystemExit("stage: the joined payload's SHA-256 differs from the manifest")
    unpacked = incoming / "payload"
    shutil.rmtree(unpacked, ignore_errors=True)
    with tarfile.open(joined) as outer:
        _extract(outer, unpacked)
    for name in MEMBERS:
        if not (unpacked / name).is_file():
            raise SystemExit(f"stage: the payload has no {name}")
    for folder in ("triton", "site", "perf", "bin"):
        shutil.rmtree(home / folder, ignore_errors=True)
    with tarfile.open(unpacked / "triton.tar.xz") as archive:
        _extract(archive, home / "triton")
    # Only the server binaries travel, not pytriton's Python API: an empty package lets
    # flowerdemo.serving.triton.find_triton() locate them the way it does in a wheel install.
    (home / "triton" / "pytriton" / "__init__.py").write_text(
        '"""tritonserver binaries only (carried for the GPU benchmark)."""\n', encoding="utf-8"
    )
    with tarfile.open(unpacked / "pylibs.tar.xz") as archive:
        _extract(archive, home / "site")
    with tarfile.open(unpacked / "perf.tar.xz") as archive:
        _extract(archive, home / "perf")
    import lzma

    (home / "bin").mkdir(parents=True, exist_ok=True)
    with lzma.open(unpacked / "envoy.xz") as source, (home / "bin" / "envoy").open("wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)
    (home / "bin" / "envoy").chmod(0o755)
    (home / "perf" / "perf_analyzer").chmod(0o755)
    shutil.copyfile(unpacked / "versions.json", home / "versions.json")
    (home / ".installed").write_text(manifest["payload"]["sha256"], encoding="utf-8")
    shutil.rmtree(incoming, ignore_errors=True)


def _extract(archive: tarfile.TarFile, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if sys.version_info >= (3, 12):
        archive.extractall(dest, filter="tar")
    else:
        for member in archive.getmembers():
            if member.name.startswith("/") or ".." in Path(member.name).parts:
                raise SystemExit(f"stage: unsafe path in archive: {member.name}")
        archive.extractall(dest)


def base_site_packages(python: str) -> str:
    """The site-packages folder holding the machine's torch (else its first site-packages)."""
    code = (
        "import os, site\n"
        "try:\n"
        "    import torch\n"
        "    print(os.path.dirname(os.path.dirname(torch.__file__)))\n"
        "except Exception:\n"
        "    print(site.getsitepackages()[0])\n"
    )
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return result.stdout.strip().splitlines()[-1]


def make_venv(home: Path, python: str, extra_sites: list[str]) -> Path:
    venv = home / "venv"
    if not (venv / "bin" / "python").exists():
        result = subprocess.run(
            [python, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True
        )
        if result.returncode != 0:
            say(f"'{python} -m venv' failed ({result.stderr.strip()[-200:]}); making it by hand")
            _manual_venv(venv, python)
    site_dir = Path(
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    site_dir.mkdir(parents=True, exist_ok=True)
    sites = [base_site_packages(python), *extra_sites]
    lines = [str(home / "site"), str(home / "triton")]
    # addsitedir also reads the .pth files there; these folders come after ours, so the
    # carried numpy<2 is found before the machine's numpy 2.
    lines += [f"import site; site.addsitedir({s!r})" for s in sites]
    (site_dir / "flowerdemo_gpu.pth").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return venv


def _manual_venv(venv: Path, python: str) -> None:
    info = subprocess.run(
        [
            python,
            "-c",
            "import sys, os; print(os.path.realpath(sys._base_executable)); "
            "print('%d.%d.%d' % sys.version_info[:3])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    executable, version = Path(info[0]), info[1]
    major_minor = ".".join(version.split(".")[:2])
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (venv / "lib" / f"python{major_minor}" / "site-packages").mkdir(parents=True, exist_ok=True)
    (venv / "pyvenv.cfg").write_text(
        f"home = {executable.parent}\ninclude-system-site-packages = false\nversion = {version}\n",
        encoding="utf-8",
    )
    for name in ("python", "python3", f"python{major_minor}"):
        link = venv / "bin" / name
        if not link.exists():
            link.symlink_to(executable)


def write_env(home: Path, venv: Path) -> Path:
    env = home / "env.sh"
    env.write_text(
        "# written by stage.sh: the carried tools first on PATH\n"
        f'export FLOWERDEMO_GPU_HOME="{home}"\n'
        f'export PATH="{venv / "bin"}:{home / "bin"}:$PATH"\n',
        encoding="utf-8",
    )
    return env


def run_checks(home: Path, venv: Path) -> list[str]:
    """Everything the benchmark relies on; returns the problems found."""
    problems: list[str] = []
    python = str(venv / "bin" / "python")
    probe = (
        "import json, sys, sysconfig, os\n"
        "out = {'python': sys.version.split()[0], 'executable': sys.executable,\n"
        "       'libdir': sysconfig.get_config_var('LIBDIR'),\n"
        "       'ldlibrary': sysconfig.get_config_var('LDLIBRARY'),\n"
        "       'instsoname': sysconfig.get_config_var('INSTSONAME')}\n"
        "for name in ('numpy', 'torch', 'PIL', 'grpc', 'google.protobuf', 'rapidjson',\n"
        "             'ml_dtypes', 'tritonclient.grpc.aio', 'pytriton', 'matplotlib'):\n"
        "    try:\n"
        "        module = __import__(name, fromlist=['_'])\n"
        "        out[name] = getattr(module, '__version__', 'ok') + ' @ ' + os.path.dirname(module.__file__)\n"
        "    except Exception as error:\n"
        "        out[name] = 'MISSING: %s: %s' % (type(error).__name__, error)\n"
        "try:\n"
        "    import torch\n"
        "    out['cuda'] = torch.cuda.is_available() and torch.cuda.get_device_name(0)\n"
        "except Exception as error:\n"
        "    out['cuda'] = 'error: %s' % error\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return [f"the venv's python does not run: {result.stderr.strip()[-500:]}"]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    for key, value in found.items():
        say(f"  {key}: {value}")
    optional = {"matplotlib"}
    for name in (
        "numpy",
        "torch",
        "PIL",
        "grpc",
        "google.protobuf",
        "rapidjson",
        "ml_dtypes",
        "tritonclient.grpc.aio",
        "pytriton",
    ):
        if str(found.get(name, "")).startswith("MISSING") and name not in optional:
            problems.append(f"python module {name}: {found[name]}")
    if not str(found.get("numpy", "")).startswith("1."):
        problems.append(
            f"numpy must be < 2 for the Python-backend stub, found {found.get('numpy')}"
        )
    libdir = Path(found.get("libdir") or "")
    soname = found.get("instsoname") or found.get("ldlibrary") or ""
    if not list(libdir.glob("libpython3*.so*")):
        problems.append(f"no shared libpython in LIBDIR {libdir} (the stub links {soname})")
    version = found["python"].rsplit(".", 1)[0]
    server = home / "triton" / "pytriton" / "tritonserver"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        problems.append(f"no Python-backend stub for Python {version} in the payload")
    triton_env = dict(os.environ)
    triton_env["LD_LIBRARY_PATH"] = f"{libdir}:{home / 'triton' / 'nvidia_pytriton.libs'}"
    perf_env = dict(os.environ)
    perf_env["LD_LIBRARY_PATH"] = str(home / "perf" / "lib")
    binaries = [
        (server / "bin" / "tritonserver", triton_env),
        (server / "backends" / "python" / "libtriton_python.so", triton_env),
        (stub, triton_env),
        (home / "bin" / "envoy", dict(os.environ)),
        (home / "perf" / "perf_analyzer", perf_env),
    ]
    for binary, env in binaries:
        if not binary.exists():
            problems.append(f"{binary} is missing")
            continue
        ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env)
        unresolved = [line.strip() for line in ldd.stdout.splitlines() if "not found" in line]
        if unresolved:
            problems.append(f"{binary.name}: libraries not found: {', '.join(unresolved)}")
    try:
        envoy = subprocess.run(
            [str(home / "bin" / "envoy"), "--version"], capture_output=True, text=True, timeout=30
        )
        version = (envoy.stdout or envoy.stderr).strip().splitlines()[-1:]
        say(f"  envoy: {version[0] if version else f'exit {envoy.returncode}'}")
    except (OSError, subprocess.TimeoutExpired) as error:
        problems.append(f"envoy does not run: {error}")
    for tool in ("nvidia-smi", "nvidia-cuda-mps-control", "ldd"):
        say(f"  {tool}: {shutil.which(tool) or 'NOT on PATH'}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part_dir", type=Path, help="the carried part folder (.gpu-a, .gpu-b, ...)")
    parser.add_argument(
        "--home", type=Path, default=Path(os.environ.get("FLOWERDEMO_GPU_HOME", DEFAULT_HOME))
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the machine's python, with torch (default: this one)",
    )
    parser.add_argument(
        "--extra-site",
        action="append",
        default=[],
        help="another site-packages for the venv (after the machine's)",
    )
    parser.add_argument(
        "--require-complete",
        action="store_true",
        help="exit 1 unless everything is installed and checked",
    )
    args = parser.parse_args(argv)
    home: Path = args.home
    manifest_path = args.part_dir / "MANIFEST.json"
    if not manifest_path.is_file():
        raise SystemExit(f"stage: {manifest_path} not found: was {args.part_dir} carried?")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    home.mkdir(parents=True, exist_ok=True)
    say(f"part {args.part_dir.name} of payload {manifest['payload']['sha256'][:12]} into {home}")
    installed = (home / ".installed").is_file() and (home / ".installed").read_text() == manifest[
        "payload"
    ]["sha256"]
    if not installed:
        copied = copy_pieces(args.part_dir, manifest, home / "incoming")
        say(f"copied {', '.join(copied) or 'no payload pieces'}")
        missing = missing_pieces(manifest, home / "incoming")
        if missing:
            names = ", ".join(f"{p['name']} (in {p['folder']})" for p in missing)
            say(f"still to come: {names}")
        else:
            install_payload(manifest, home)
            installed = True
            say("payload complete: installed")
    else:
        copied = copy_pieces(
            args.part_dir,
            {"payload": {"pieces": []}, "weights": manifest.get("weights", [])},
            home / "incoming",
        )
        say(f"payload already installed{'; copied ' + ', '.join(copied) if copied else ''}")
    venv = make_venv(home, args.python, args.extra_site)
    env = write_env(home, venv)
    # The machine's own python draws the charts if matplotlib does not load beside numpy<2.
    (home / "base_python.txt").write_text(args.python + "\n", encoding="utf-8")
    say(f"venv {venv} (python3 there is what Triton's stub runs); shell settings in {env}")
    problems = run_checks(home, venv) if installed else ["payload not complete yet"]
    weights = (
        sorted(p.name for p in (home / "weights").glob("*")) if (home / "weights").is_dir() else []
    )
    if weights:
        say(f"weights: {', '.join(weights)}")
    say("contents: " + ", ".join(sorted(p.name for p in home.iterdir())))
    if problems:
        for problem in problems:
            say(f"PROBLEM: {problem}")
        return 1 if args.require_complete else 0
    say("ready: everything the benchmark needs is here")
    return 0


if __name__ == "__main__":
    sys.exit(main())
