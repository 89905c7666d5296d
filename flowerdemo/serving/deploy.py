"""The serving stack as deployment files: a docker compose project, or Kubernetes manifests.

Both are generated from the same `DeploymentPlan` as the local stack, so the model, the instance
count and the Envoy behaviour (retries, outlier detection, health checks) are the same ones.
What differs from the local stack, and why:
- Each Triton runs in its own container network namespace, so it binds 0.0.0.0 on Triton's
  default ports there, and Envoy reaches it by service name. Envoy's clusters therefore resolve
  names (STRICT_DNS) instead of the local stack's fixed 127.0.0.1 addresses.
- NVIDIA's Triton image has no ONNX Runtime for its Python backend: the repository must be of
  the "onnx" or "tensorrt" flavour (the platform backends of that image).
- Compose: one service per instance, each pinned to its device (a MIG slice, a GPU or the
  CPU). Kubernetes: one Deployment whose pods each request one MIG slice, a headless Service
  so Envoy sees every pod, and a HorizontalPodAutoscaler on Triton's queue time (the metric of
  Triton's own Helm example) that adds pods, on this machine or others, as the queue grows.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from flowerdemo.serving.devices import docker_gpus_value
from flowerdemo.serving.envoy import EnvoySettings, build_config, split_address, to_yaml
from flowerdemo.serving.plan import DeploymentPlan
from flowerdemo.serving.repository import WIRES, variant_name

# Triton's own ports inside its container or pod.
TRITON_HTTP_PORT = 8000
TRITON_GRPC_PORT = 8001
TRITON_METRICS_PORT = 8002
CONTAINER_REPOSITORY = "/models"
ENVOY_CONFIG_IN_CONTAINER = "/etc/envoy/envoy.yaml"
ENVOY_TLS_DIR_IN_CONTAINER = "/etc/envoy/tls"
"""Where Envoy's TLS certificate and key are mounted (tls.crt, tls.key: a Kubernetes TLS
Secret's key names)."""
K8S_TLS_SECRET = "flowerdemo-tls"  # noqa: S105 - the name of a Secret object, not a password
CONTAINER_FLAVOURS = ("onnx", "tensorrt")

COMPOSE_FILE = "compose.yaml"
COMPOSE_ENVOY_FILE = "envoy-compose.yaml"

DEFAULT_MIG_PROFILE = "1g.10gb"
# Triton's Helm example scales on the average queue time per request in microseconds, through a
# prometheus-adapter rule that names it avg_time_queue_us; 50 us is that example's target.
QUEUE_TIME_METRIC = "avg_time_queue_us"
DEFAULT_QUEUE_TIME_TARGET_US = 50
K8S_APP = "flowerdemo"
K8S_MODELS_CLAIM = "flowerdemo-models"


class DeploymentError(ValueError):
    """A plan that cannot become a container deployment."""


class _BlockStyleDumper(yaml.SafeDumper):
    """Multi-line strings (embedded configuration files) as literal blocks; no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_BlockStyleDumper.add_representer(str, _represent_str)


def dump_yaml(documents: list[dict[str, Any]], header: str) -> str:
    """YAML text of one or more documents, after a comment header."""
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    body = yaml.dump_all(
        documents,
        Dumper=_BlockStyleDumper,
        sort_keys=False,
        default_flow_style=False,
        explicit_start=len(documents) > 1,
        width=100,
    )
    return comment + body


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _check_plan(plan: DeploymentPlan) -> None:
    if not plan.instances:
        raise DeploymentError("deployment plan: no Triton instances")
    if plan.repository_flavour not in CONTAINER_FLAVOURS:
        raise DeploymentError(
            f"repository flavour {plan.repository_flavour!r}: NVIDIA's Triton image serves the "
            f"{' or '.join(CONTAINER_FLAVOURS)} flavour (its Python backend has no ONNX Runtime); "
            "write the repository with one of those"
        )
    for what, address in (
        ("listen", plan.listen),
        ("http listen", plan.http_listen),
        ("admin listen", plan.admin_listen),
    ):
        split_address(address, what)


def container_envoy_config(
    plan: DeploymentPlan,
    grpc_upstreams: tuple[str, ...],
    http_upstreams: tuple[str, ...],
    *,
    admin_loopback: bool = False,
    tls: bool = False,
) -> str:
    """Envoy's YAML for a container: listens on all of its own interfaces, upstreams by name.

    The routing, retry, outlier and health-check behaviour is the local stack's
    (`envoy.build_config`); only the addresses and the cluster type change, because
    container and pod addresses come from DNS. `admin_loopback` keeps the admin
    interface inside the pod (anyone who reaches it can stop the balancer). `tls`: the
    listeners terminate TLS with the certificate mounted in ENVOY_TLS_DIR_IN_CONTAINER.
    """
    admin_port = split_address(plan.admin_listen, "admin listen")[1]
    settings = EnvoySettings(
        grpc_upstreams=grpc_upstreams,
        http_upstreams=http_upstreams,
        listen=f"0.0.0.0:{split_address(plan.listen, 'listen')[1]}",
        http_listen=f"0.0.0.0:{split_address(plan.http_listen, 'http listen')[1]}",
        admin_listen=f"127.0.0.1:{admin_port}" if admin_loopback else f"0.0.0.0:{admin_port}",
        tls_certificate=f"{ENVOY_TLS_DIR_IN_CONTAINER}/tls.crt" if tls else None,
        tls_private_key=f"{ENVOY_TLS_DIR_IN_CONTAINER}/tls.key" if tls else None,
    )
    config = build_config(settings)
    for cluster in config["static_resources"]["clusters"]:
        # STRICT_DNS keeps every address a name resolves to as a host: with a headless
        # Kubernetes Service, one host per pod, re-resolved (every 5 s by default) as pods
        # come and go.
        cluster["type"] = "STRICT_DNS"
        cluster["dns_lookup_family"] = "V4_ONLY"
    return (
        "# Envoy v3 bootstrap generated by flowerdemo for containers: Triton instances by name.\n"
        + to_yaml(config)
        + "\n"
    )


def _triton_args(plan: DeploymentPlan) -> list[str]:
    return [
        "tritonserver",
        f"--model-repository={CONTAINER_REPOSITORY}",
        "--model-control-mode=explicit",
        f"--load-model={plan.model_name}",
        # The wire variants (ensembles: Triton loads their preprocessing steps with them).
        *(
            f"--load-model={variant_name(plan.model_name, wire)}"
            for wire in WIRES
            if wire != "fp32"
        ),
        "--strict-readiness=true",
        "--exit-on-error=true",
    ]


def _envoy_args() -> list[str]:
    # One worker, as locally: Envoy's workers each round-robin on their own.
    return ["envoy", "-c", ENVOY_CONFIG_IN_CONTAINER, "--concurrency", "1", "--log-level", "warn"]


def _nvidia_device_id(device: str, position: int) -> str | None:
    """What compose's `device_ids` takes for an instance device: "0:3", "MIG-...", "1"."""
    gpus = docker_gpus_value(device, position)
    if gpus is None:
        return None
    prefix = '"device='
    if not (gpus.startswith(prefix) and gpus.endswith('"')):
        raise DeploymentError(f"device {device!r}: cannot express it as a Docker device id")
    return gpus[len(prefix) : -1]


def _repository_mount(dest: Path, repository: Path) -> str:
    """The repository as compose should mount it: relative when it lives beside the file."""
    dest = dest.resolve()
    repository = repository.resolve()
    if repository.is_relative_to(dest):
        return "./" + repository.relative_to(dest).as_posix()
    return repository.as_posix()


def compose_document(
    dest: Path, plan: DeploymentPlan, tls_files: tuple[Path, Path] | None = None
) -> dict[str, Any]:
    """The compose project as data: one Triton service per instance, Envoy in front."""
    _check_plan(plan)
    repository = _repository_mount(dest, plan.repository)
    services: dict[str, Any] = {}
    for instance in plan.instances:
        service: dict[str, Any] = {
            "image": plan.triton_image,
            "command": _triton_args(plan),
            "volumes": [f"{repository}:{CONTAINER_REPOSITORY}:ro"],
            # Published on the host's loopback only: for perf_analyzer straight at one
            # instance and for a local Prometheus. Clients come in through Envoy.
            "ports": [
                f"127.0.0.1:{instance.http_port}:{TRITON_HTTP_PORT}",
                f"127.0.0.1:{instance.grpc_port}:{TRITON_GRPC_PORT}",
                f"127.0.0.1:{instance.metrics_port}:{TRITON_METRICS_PORT}",
            ],
            # NVIDIA's recommended limits for Triton containers.
            "shm_size": "1gb",
            "ulimits": {"memlock": -1, "stack": 67108864},
            "restart": "unless-stopped",
        }
        device_id = _nvidia_device_id(instance.device, instance.index)
        if device_id is not None:
            service["deploy"] = {
                "resources": {
                    "reservations": {
                        "devices": [
                            {"driver": "nvidia", "device_ids": [device_id], "capabilities": ["gpu"]}
                        ]
                    }
                }
            }
        services[instance.name] = service

    listen_host, listen_port = split_address(plan.listen, "listen")
    http_host, http_port = split_address(plan.http_listen, "http listen")
    _, admin_port = split_address(plan.admin_listen, "admin listen")
    services["envoy"] = {
        "image": plan.envoy_image,
        "command": _envoy_args(),
        "volumes": [f"./{COMPOSE_ENVOY_FILE}:{ENVOY_CONFIG_IN_CONTAINER}:ro"]
        + (
            [
                f"{Path(tls_files[0]).resolve()}:{ENVOY_TLS_DIR_IN_CONTAINER}/tls.crt:ro",
                f"{Path(tls_files[1]).resolve()}:{ENVOY_TLS_DIR_IN_CONTAINER}/tls.key:ro",
            ]
            if tls_files
            else []
        ),
        "ports": [
            f"{listen_host}:{listen_port}:{listen_port}",
            f"{http_host}:{http_port}:{http_port}",
            f"127.0.0.1:{admin_port}:{admin_port}",
        ],
        # Started after the Tritons; Envoy's own health checks decide when each one gets
        # traffic, so a slow model load only delays that instance.
        "depends_on": [instance.name for instance in plan.instances],
        "restart": "unless-stopped",
    }
    return {"name": "flowerdemo", "services": services}


def write_compose(
    dest: Path, plan: DeploymentPlan, *, tls_files: tuple[Path, Path] | None = None
) -> list[Path]:
    """Write `compose.yaml` and the Envoy config it mounts into `dest`; return the paths.
    `tls_files` (certificate, key): mounted into Envoy, whose listeners then speak TLS."""
    dest = Path(dest)
    document = compose_document(dest, plan, tls_files)
    envoy_text = container_envoy_config(
        plan,
        tuple(f"{instance.name}:{TRITON_GRPC_PORT}" for instance in plan.instances),
        tuple(f"{instance.name}:{TRITON_HTTP_PORT}" for instance in plan.instances),
        tls=tls_files is not None,
    )
    header = (
        f"flowerdemo: {len(plan.instances)} Triton instances behind Envoy, generated from the "
        "deployment plan.\n"
        f"Start: docker compose -f {COMPOSE_FILE} up -d   (needs the NVIDIA Container Toolkit "
        "for GPU and MIG devices)\n"
        f"Clients: --url <this host>:{split_address(plan.listen, 'listen')[1]}"
    )
    return [
        _write(dest / COMPOSE_FILE, dump_yaml([document], header)),
        _write(dest / COMPOSE_ENVOY_FILE, envoy_text),
    ]


def _labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": K8S_APP, "app.kubernetes.io/component": component}


def pod_accelerator(plan: DeploymentPlan, mig_profile: str = DEFAULT_MIG_PROFILE) -> str | None:
    """The extended resource a Triton pod requests for the plan's devices, None for the CPU."""
    if not re.fullmatch(r"[1-7]g\.[0-9]+gb(\+me)?", mig_profile):
        raise DeploymentError(
            f"MIG profile {mig_profile!r}: expected a profile name such as 1g.10gb"
        )
    devices = plan.devices
    if any(device.lower().startswith("mig") for device in devices):
        return f"nvidia.com/mig-{mig_profile}"
    if any(device != "cpu" for device in devices):
        return "nvidia.com/gpu"
    return None


def kubernetes_documents(
    plan: DeploymentPlan,
    *,
    mig_profile: str = DEFAULT_MIG_PROFILE,
    max_replicas: int | None = None,
    queue_time_target_us: int = DEFAULT_QUEUE_TIME_TARGET_US,
    tls: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """File name -> the Kubernetes objects in it.

    What each Triton pod requests follows the plan's devices: MIG slices -> one
    `nvidia.com/mig-<mig_profile>` (the NVIDIA device plugin's "mixed" strategy names), whole
    GPUs -> one `nvidia.com/gpu`, the CPU -> no accelerator. The scheduler picks the actual
    slice, so the plan's UUIDs or slice numbers do not carry over. The Deployment starts with
    one pod per planned instance; the autoscaler may grow it to `max_replicas` (default: twice
    that). Envoy's admin interface stays on the pod's loopback. `tls`: Envoy's listeners
    terminate TLS with the certificate of the TLS Secret K8S_TLS_SECRET (created by
    `kubectl create secret tls flowerdemo-tls --cert=CERT --key=KEY`, never written here).
    """
    _check_plan(plan)
    replicas = len(plan.instances)
    max_replicas = max_replicas if max_replicas is not None else 2 * replicas
    if max_replicas < replicas:
        raise DeploymentError(
            f"max replicas {max_replicas}: must be at least the planned {replicas} instances"
        )
    if queue_time_target_us < 1:
        raise DeploymentError(f"queue time target {queue_time_target_us} us: must be positive")

    triton_labels = _labels("triton")
    envoy_labels = _labels("envoy")
    resources: dict[str, Any] = {}
    accelerator = pod_accelerator(plan, mig_profile)
    if accelerator is not None:
        resources = {"limits": {accelerator: 1}}

    def http_probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": "http"},
            "periodSeconds": period_s,
            "failureThreshold": failures,
        }

    triton_container: dict[str, Any] = {
        "name": "triton",
        "image": plan.triton_image,
        "args": _triton_args(plan),
        "ports": [
            {"name": "http", "containerPort": TRITON_HTTP_PORT},
            {"name": "grpc", "containerPort": TRITON_GRPC_PORT},
            {"name": "metrics", "containerPort": TRITON_METRICS_PORT},
        ],
        "volumeMounts": [
            {"name": "models", "mountPath": CONTAINER_REPOSITORY, "readOnly": True},
            # The pod's own shared memory, sized by the volume below (Docker's shm_size).
            {"name": "dshm", "mountPath": "/dev/shm"},  # noqa: S108
        ],
        # The model may take minutes to load (a TensorRT engine, cuDNN autotuning): the
        # startup probe gives it 5 minutes before liveness counts.
        "startupProbe": http_probe("/v2/health/ready", 10, 30),
        "livenessProbe": http_probe("/v2/health/live", 10, 3),
        "readinessProbe": http_probe("/v2/health/ready", 5, 3),
    }
    if resources:
        triton_container["resources"] = resources

    triton_deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "triton", "labels": triton_labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": triton_labels},
            "template": {
                "metadata": {
                    "labels": triton_labels,
                    # For a Prometheus that discovers pods by annotation; the autoscaler's
                    # metric comes from these scrapes.
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(TRITON_METRICS_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "securityContext": {"runAsUser": 1000, "fsGroup": 1000},
                    "containers": [triton_container],
                    "volumes": [
                        {
                            "name": "models",
                            "persistentVolumeClaim": {
                                "claimName": K8S_MODELS_CLAIM,
                                "readOnly": True,
                            },
                        },
                        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
                    ],
                },
            },
        },
    }
    triton_service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "triton", "labels": triton_labels},
        "spec": {
            # Headless: the name resolves to every ready pod, so Envoy balances requests
            # across pods instead of a ClusterIP pinning each HTTP/2 connection to one pod.
            "clusterIP": "None",
            "selector": triton_labels,
            "ports": [
                {"name": "http", "port": TRITON_HTTP_PORT, "targetPort": "http"},
                {"name": "grpc", "port": TRITON_GRPC_PORT, "targetPort": "grpc"},
                {"name": "metrics", "port": TRITON_METRICS_PORT, "targetPort": "metrics"},
            ],
        },
    }
    triton_hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "triton", "labels": triton_labels},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "triton"},
            "minReplicas": replicas,
            "maxReplicas": max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": QUEUE_TIME_METRIC},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": str(queue_time_target_us),
                        },
                    },
                }
            ],
        },
    }
    models_claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": K8S_MODELS_CLAIM, "labels": triton_labels},
        "spec": {
            # Written once (see packaging/README.md), then mounted read-only by every pod.
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "2Gi"}},
        },
    }

    listen_port = split_address(plan.listen, "listen")[1]
    http_port = split_address(plan.http_listen, "http listen")[1]
    envoy_text = container_envoy_config(
        plan,
        (f"triton:{TRITON_GRPC_PORT}",),
        (f"triton:{TRITON_HTTP_PORT}",),
        admin_loopback=True,
        tls=tls,
    )
    envoy_mounts: list[dict[str, Any]] = [
        {
            "name": "config",
            "mountPath": str(Path(ENVOY_CONFIG_IN_CONTAINER).parent),
            "readOnly": True,
        }
    ]
    envoy_volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": "envoy-config"}}
    ]
    if tls:
        envoy_mounts.append(
            {"name": "tls", "mountPath": ENVOY_TLS_DIR_IN_CONTAINER, "readOnly": True}
        )
        envoy_volumes.append({"name": "tls", "secret": {"secretName": K8S_TLS_SECRET}})
    envoy_config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "envoy-config", "labels": envoy_labels},
        "data": {"envoy.yaml": envoy_text},
    }
    envoy_deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "envoy", "labels": envoy_labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": envoy_labels},
            "template": {
                "metadata": {"labels": envoy_labels},
                "spec": {
                    "containers": [
                        {
                            "name": "envoy",
                            "image": plan.envoy_image,
                            "args": _envoy_args(),
                            "ports": [
                                {"name": "grpc", "containerPort": listen_port},
                                {"name": "http", "containerPort": http_port},
                            ],
                            # The admin interface (and its /ready) is on the pod's loopback,
                            # out of the kubelet's reach: ready once the gRPC listener accepts.
                            "readinessProbe": {
                                "tcpSocket": {"port": "grpc"},
                                "periodSeconds": 5,
                            },
                            "volumeMounts": envoy_mounts,
                        }
                    ],
                    "volumes": envoy_volumes,
                },
            },
        },
    }
    envoy_service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "envoy", "labels": envoy_labels},
        "spec": {
            # The booth's client connects here from outside the cluster; where no load
            # balancer exists, `kubectl port-forward service/envoy` reaches it too.
            "type": "LoadBalancer",
            "selector": envoy_labels,
            "ports": [
                {"name": "grpc", "port": listen_port, "targetPort": "grpc"},
                {"name": "http", "port": http_port, "targetPort": "http"},
            ],
        },
    }
    return {
        "models-pvc.yaml": [models_claim],
        "triton-deployment.yaml": [triton_deployment],
        "triton-service.yaml": [triton_service],
        "triton-hpa.yaml": [triton_hpa],
        "envoy-configmap.yaml": [envoy_config_map],
        "envoy-deployment.yaml": [envoy_deployment],
        "envoy-service.yaml": [envoy_service],
    }


def prometheus_adapter_values() -> dict[str, Any]:
    """Helm values for prometheus-adapter that serve the autoscaler's queue-time metric.

    Average queue time per request over 30 s, per pod: the rule of Triton's Helm example.
    """
    matchers = "<<.LabelMatchers>>"
    return {
        "rules": {
            "custom": [
                {
                    "seriesQuery": 'nv_inference_queue_duration_us{namespace!="",pod!=""}',
                    "resources": {
                        "overrides": {
                            "namespace": {"resource": "namespace"},
                            "pod": {"resource": "pod"},
                        }
                    },
                    "name": {"matches": "nv_inference_queue_duration_us", "as": QUEUE_TIME_METRIC},
                    "metricsQuery": (
                        f"avg(delta(nv_inference_queue_duration_us{{{matchers}}}[30s])"
                        f"/(1+delta(nv_inference_request_success{{{matchers}}}[30s])))"
                        " by (<<.GroupBy>>)"
                    ),
                }
            ]
        }
    }


def write_kubernetes(
    dest: Path,
    plan: DeploymentPlan,
    *,
    mig_profile: str = DEFAULT_MIG_PROFILE,
    max_replicas: int | None = None,
    queue_time_target_us: int = DEFAULT_QUEUE_TIME_TARGET_US,
    tls: bool = False,
) -> list[Path]:
    """Write the manifests, a kustomization listing them and the adapter's values into `dest`.

    `kubectl apply -k DEST` applies them all. The model repository goes into the
    `flowerdemo-models` volume claim (see packaging/README.md).
    """
    dest = Path(dest)
    documents = kubernetes_documents(
        plan,
        mig_profile=mig_profile,
        max_replicas=max_replicas,
        queue_time_target_us=queue_time_target_us,
        tls=tls,
    )
    accelerator = pod_accelerator(plan, mig_profile)
    device = f"one {accelerator} each" if accelerator else "CPU only"
    written = []
    for name, objects in documents.items():
        header = f"flowerdemo on Kubernetes ({name}): Triton pods ({device}) behind Envoy."
        written.append(_write(dest / name, dump_yaml(objects, header)))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": list(documents),
    }
    written.append(
        _write(
            dest / "kustomization.yaml",
            dump_yaml(
                [kustomization],
                "Apply everything: kubectl apply -k <this folder>"
                + (
                    f"\nFirst, Envoy's TLS certificate: kubectl create secret tls "
                    f"{K8S_TLS_SECRET} --cert=CERT.pem --key=KEY.pem"
                    if tls
                    else ""
                ),
            ),
        )
    )
    written.append(
        _write(
            dest / "prometheus-adapter-values.yaml",
            dump_yaml(
                [prometheus_adapter_values()],
                "Values for the prometheus-adapter Helm chart: serves avg_time_queue_us to the "
                "autoscaler.\nhelm install prometheus-adapter prometheus-community/"
                "prometheus-adapter -f prometheus-adapter-values.yaml "
                "--set prometheus.url=http://<your prometheus service>",
            ),
        )
    )
    return written
