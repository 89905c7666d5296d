"""The tritonserver binary bundled in the nvidia-pytriton wheel, and how to run it directly.

Running the binary without pytriton's Python API keeps full `config.pbtxt` semantics
(label_filename, dynamic batching, instance groups). Its traps, each handled here:
- the Python backend (`libtriton_python.so`, its utils module and the stub built for this
  interpreter) must sit together in one backend folder, prepared once before any instance
  starts: overwriting the library under a running Triton crashes it;
- LD_LIBRARY_PATH must start with this interpreter's LIBDIR (else the stub loads another
  libpython), then the wheel's bundled libraries;
- the stub finds its packages through the `python3` first on PATH, so this interpreter's bin
  folder (a virtualenv's, with numpy<2 and onnxruntime) goes first.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
STUB_NAME = "triton_python_backend_stub"
# The Python backend names its shared-memory regions with this prefix (our own, per instance),
# so the regions of a killed instance can be found and removed without touching anyone else's.
SHM_PREFIX_BASE = "flowerdemo_"


class TritonNotFound(FileNotFoundError):
    pass


@dataclass(frozen=True)
class TritonInstall:
    """Where the parts of an installed nvidia-pytriton wheel are."""

    server_dir: Path  # .../pytriton/tritonserver
    binary: Path
    python_backend_dir: Path
    stub: Path
    caches_dir: Path
    libs_dir: Path  # .../nvidia_pytriton.libs


def find_triton() -> TritonInstall:
    """Locate the tritonserver binary and the Python backend for the running interpreter."""
    try:
        import pytriton
    except ImportError as error:
        raise TritonNotFound(
            "tritonserver not found: install flowerdemo[serve] (the nvidia-pytriton package)"
        ) from error
    package_dir = Path(pytriton.__file__).resolve().parent
    server_dir = package_dir / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        server_dir=server_dir,
        binary=server_dir / "bin" / "tritonserver",
        python_backend_dir=server_dir / "backends" / "python",
        stub=server_dir / "python_backend_stubs" / version / STUB_NAME,
        caches_dir=server_dir / "caches",
        libs_dir=package_dir.parent / "nvidia_pytriton.libs",
    )
    wanted = {
        "tritonserver binary": install.binary,
        "Python backend library": install.python_backend_dir / BACKEND_FILES[0],
        f"Python backend stub for Python {version}": install.stub,
    }
    for what, path in wanted.items():
        if not path.is_file():
            raise TritonNotFound(f"{what} not found at {path} (is nvidia-pytriton complete?)")
    return install


def prepare_backend_dir(install: TritonInstall, dest: Path) -> Path:
    """Copy the Python backend into `dest/python` and return `dest` (for --backend-directory).

    Call it once per stack before any instance starts, into a folder no running Triton uses.
    """
    python_dir = Path(dest) / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for name in BACKEND_FILES:
        shutil.copy2(install.python_backend_dir / name, python_dir / name)
    shutil.copy2(install.stub, python_dir / STUB_NAME)
    return Path(dest)


def interpreter_bin_dir() -> Path:
    """The folder holding this interpreter's `python3` (a virtualenv's bin when in one)."""
    return Path(sys.executable).parent


def triton_environment(
    install: TritonInstall,
    *,
    device: str,
    tmp_dir: Path,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment for one tritonserver process pinned to `device`.

    `device` is "cpu", "cuda:<i>" or "MIG-<uuid>" (a GPU UUID "GPU-<uuid>" works too).
    `tmp_dir` becomes TMPDIR, so temporary folders the server makes land in our work folder.
    """
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    library_path = [libdir, str(install.libs_dir)]
    if env.get("LD_LIBRARY_PATH"):
        library_path.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(part for part in library_path if part)
    path_parts = [str(interpreter_bin_dir())]
    if env.get("PATH"):
        path_parts.append(env["PATH"])
    env["PATH"] = os.pathsep.join(path_parts)
    env.pop("PYTHONHOME", None)
    env["TMPDIR"] = str(tmp_dir)
    env["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices(device)
    # ONNX Runtime and numpy would otherwise size thread pools to the whole machine in every
    # instance; the model sets its own ONNX Runtime thread count.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def cuda_visible_devices(device: str) -> str:
    """CUDA_VISIBLE_DEVICES for a device spec: "" hides every GPU for "cpu"."""
    if device == "cpu":
        return ""
    if device.startswith("cuda:") and device[5:].isdigit():
        return device[5:]
    if device.startswith(("MIG-", "GPU-")):
        return device
    raise ValueError(
        f"device {device!r}: expected 'cpu', 'cuda:<index>' or 'MIG-<uuid>' (from nvidia-smi -L)"
    )


def shm_prefix(owner: str, index: int) -> str:
    """The Python backend's shared-memory name prefix for instance `index` of stack `owner`."""
    return f"{SHM_PREFIX_BASE}{owner}_{index}_"


def triton_command(
    install: TritonInstall,
    *,
    repository: Path,
    backend_dir: Path,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    shm_region_prefix: str,
    gpu: bool,
    log_verbose: int = 0,
) -> list[str]:
    return [
        str(install.binary),
        f"--model-repository={repository}",
        f"--backend-directory={backend_dir}",
        f"--cache-directory={install.caches_dir}",
        f"--http-address={host}",
        f"--http-port={http_port}",
        f"--grpc-address={host}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={host}",
        f"--metrics-port={metrics_port}",
        f"--allow-gpu-metrics={'true' if gpu else 'false'}",
        "--exit-on-error=true",
        "--strict-readiness=true",
        "--exit-timeout-secs=5",
        f"--log-verbose={log_verbose}",
        f"--backend-config=python,shm-region-prefix-name={shm_region_prefix}",
    ]


def container_command(
    *,
    image: str,
    repository: Path,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    docker_gpus: str | None,
    name: str,
) -> list[str]:
    """`docker run` for NVIDIA's Triton container serving `repository` (host networking).

    `docker_gpus` is the value of `--gpus`, for example '"device=0:1"' for MIG slice 1 of GPU 0;
    None runs on the CPU.
    """
    command = ["docker", "run", "--rm", "--name", name, "--network", "host", "--shm-size", "1g"]
    if docker_gpus is not None:
        command += ["--gpus", docker_gpus]
    command += [
        "-v",
        f"{repository}:/models:ro",
        image,
        "tritonserver",
        "--model-repository=/models",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        "--strict-readiness=true",
    ]
    return command
