"""Device specs for Triton instances: the CPU, a whole GPU, or a MIG slice.

Accepted forms: "cpu"; "cuda:<i>"; "MIG-<uuid>" or "GPU-<uuid>" (as `nvidia-smi -L` lists them);
"mig" (every MIG slice on the machine, one per instance in turn); "mig:<gpu>:<k>" (slice k of GPU
`gpu`, the numbering Docker's `--gpus '"device=<gpu>:<k>"'` uses). Locally a slice is reached
through CUDA_VISIBLE_DEVICES=MIG-<uuid>; the "mig..." forms are turned into UUIDs here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

_GPU_LINE = re.compile(r"^GPU (\d+): .*\(UUID: (GPU-[^)]+)\)")
_MIG_LINE = re.compile(r"^\s+MIG .*Device\s+(\d+): \(UUID: (MIG-[^)]+)\)")


class DeviceError(ValueError):
    pass


@dataclass(frozen=True)
class MigDevice:
    gpu: int
    index: int
    uuid: str


def parse_nvidia_smi_list(text: str) -> tuple[list[str], list[MigDevice]]:
    """GPU UUIDs and MIG devices from the output of `nvidia-smi -L`."""
    gpus: list[str] = []
    migs: list[MigDevice] = []
    current_gpu = -1
    for line in text.splitlines():
        gpu_match = _GPU_LINE.match(line)
        if gpu_match:
            current_gpu = int(gpu_match.group(1))
            gpus.append(gpu_match.group(2))
            continue
        mig_match = _MIG_LINE.match(line)
        if mig_match and current_gpu >= 0:
            migs.append(MigDevice(current_gpu, int(mig_match.group(1)), mig_match.group(2)))
    return gpus, migs


def list_mig_devices() -> list[MigDevice]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise DeviceError("device mig: nvidia-smi not found, so no MIG device can be listed")
    try:
        result = subprocess.run(
            [smi, "-L"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DeviceError(f"device mig: running nvidia-smi -L failed: {error}") from error
    if result.returncode != 0:
        raise DeviceError(f"device mig: nvidia-smi -L failed: {result.stderr.strip()}")
    return parse_nvidia_smi_list(result.stdout)[1]


def check_device(device: str) -> None:
    if device in ("cpu", "mig"):
        return
    if re.fullmatch(r"cuda:\d+", device) or re.fullmatch(r"mig:\d+:\d+", device):
        return
    if re.fullmatch(r"(MIG|GPU)-[0-9A-Za-z/_-]+", device):
        return
    raise DeviceError(
        f"device {device!r}: expected cpu, cuda:<i>, mig, mig:<gpu>:<k> or MIG-<uuid>"
    )


def resolve_devices(
    devices: tuple[str, ...], mig_devices: list[MigDevice] | None = None
) -> tuple[str, ...]:
    """Turn "mig" and "mig:<gpu>:<k>" into MIG UUIDs; other forms pass through checked.

    `mig_devices` defaults to what `nvidia-smi -L` lists (asked only when needed).
    """
    for device in devices:
        check_device(device)
    if not any(device.startswith("mig") for device in devices):
        return devices
    migs = mig_devices if mig_devices is not None else list_mig_devices()
    resolved: list[str] = []
    for device in devices:
        if device == "mig":
            if not migs:
                raise DeviceError("device mig: no MIG devices found (is MIG enabled?)")
            resolved.extend(mig.uuid for mig in migs)
        elif device.startswith("mig:"):
            _, gpu, index = device.split(":")
            found = [m for m in migs if m.gpu == int(gpu) and m.index == int(index)]
            if not found:
                raise DeviceError(f"device {device}: no MIG device {index} on GPU {gpu}")
            resolved.append(found[0].uuid)
        else:
            resolved.append(device)
    return tuple(resolved)


def docker_gpus_value(device: str, mig_index: int) -> str | None:
    """`--gpus` for NVIDIA's container: '"device=0:k"' for a MIG slice, None for the CPU.

    For "mig" (all slices) the slice number is the instance's position, `mig_index`.
    """
    if device == "cpu":
        return None
    if device == "mig":
        return f'"device=0:{mig_index}"'
    if device.startswith("mig:"):
        _, gpu, index = device.split(":")
        return f'"device={gpu}:{index}"'
    if device.startswith("cuda:"):
        return f'"device={device[5:]}"'
    return f'"device={device}"'
