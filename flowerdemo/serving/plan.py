"""What a deployment of the serving stack consists of, independent of how it is run.

One `DeploymentPlan` describes N Triton instances (ports, device), the model repository they
serve and the Envoy configuration in front of them. The local stack (`serving.stack`), the
`--print-config` writer (`serving.cli`) and the compose / Kubernetes writers (`serving.deploy`)
all read the same plan, so the port plan and device assignment are decided in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_BASE_PORT = 8000
PORT_STRIDE = 10
DEFAULT_MODEL_NAME = "flowers"
# Triton 2.51 is what the nvidia-pytriton wheel bundles; 24.10 is the NGC release carrying it.
DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
DEFAULT_ENVOY_IMAGE = "envoyproxy/envoy:v1.40-latest"


def instance_ports(base_port: int, index: int) -> tuple[int, int, int]:
    """(http, grpc, metrics) for instance `index`: 8000+10k, 8001+10k, 8002+10k for base 8000."""
    first = base_port + PORT_STRIDE * index
    return first, first + 1, first + 2


@dataclass(frozen=True)
class InstancePlan:
    """One Triton instance.

    `device` is one of: "cpu"; "cuda:<i>" (a whole GPU); "MIG-<uuid>" (a MIG slice by UUID, as
    `nvidia-smi -L` lists it); "mig:<gpu>:<k>" (MIG slice k of GPU `gpu`, the form Docker's
    `--gpus '"device=<gpu>:<k>"'` takes).
    """

    index: int
    name: str
    device: str
    http_port: int
    grpc_port: int
    metrics_port: int
    host: str = "127.0.0.1"

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_address(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def uses_gpu(self) -> bool:
        return self.device != "cpu"


@dataclass(frozen=True)
class DeploymentPlan:
    """N Triton instances serving one model repository behind one Envoy.

    `repository` is the model repository folder (one model, `model_name`); `envoy_config` is the
    Envoy v3 YAML file routing `listen` (gRPC) and `http_listen` (HTTP) to the instances.
    """

    model_name: str
    repository: Path
    envoy_config: Path
    instances: tuple[InstancePlan, ...]
    listen: str = "127.0.0.1:50050"
    http_listen: str = "127.0.0.1:50051"
    admin_listen: str = "127.0.0.1:50052"
    triton_image: str = DEFAULT_TRITON_IMAGE
    envoy_image: str = DEFAULT_ENVOY_IMAGE
    # The flavour of the repository: "python" (Python backend + ONNX Runtime, the local stack)
    # or "onnx" / "tensorrt" (NVIDIA's containers).
    repository_flavour: str = "python"

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(instance.device for instance in self.instances)


def make_instances(
    count: int,
    devices: tuple[str, ...],
    base_port: int = DEFAULT_BASE_PORT,
    host: str = "127.0.0.1",
) -> tuple[InstancePlan, ...]:
    """Instance k gets the port plan above and device `devices[k % len(devices)]`."""
    if count < 1:
        raise ValueError(f"instances: need at least 1, got {count}")
    if not devices:
        raise ValueError("devices: need at least one device (for example 'cpu')")
    return tuple(make_instance(index, devices, base_port, host) for index in range(count))


def instance_name(index: int) -> str:
    return f"triton-{index}"


def make_instance(
    index: int,
    devices: tuple[str, ...],
    base_port: int = DEFAULT_BASE_PORT,
    host: str = "127.0.0.1",
) -> InstancePlan:
    """Instance `index`: its ports from the port plan, device `devices[index % len(devices)]`."""
    http_port, grpc_port, metrics_port = instance_ports(base_port, index)
    return InstancePlan(
        index=index,
        name=instance_name(index),
        device=devices[index % len(devices)],
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        host=host,
    )
