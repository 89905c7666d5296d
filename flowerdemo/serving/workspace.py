"""What a stack needs before any instance starts: its settings, the model it serves and the model
repositories written from it (one for CPU instances, one for GPU instances, as the devices ask).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flowerdemo.serving.repository import (
    WIRES,
    RepositoryError,
    RepositoryOptions,
    write_repository,
)


class StackError(RuntimeError):
    """The stack could not do what was asked; the message names the part and the cause."""


@dataclass(frozen=True)
class StackSettings:
    """What to start.

    `model`: None serves the bundled model (flowerdemo.resources.bundled_model_dir()); a folder
    holding one `.onnx` file and `labels.txt`; or an `.onnx` file, with `labels` or a
    `labels.txt` beside it. `devices` are given to the instances in turn (see
    serving.devices). `workdir`: None makes a temporary folder removed on stop; a given folder
    is kept (repository, envoy.yaml, endpoint files and logs stay there for inspection).
    """

    instances: int = 2
    listen: str = "127.0.0.1:50050"
    http_listen: str = "127.0.0.1:50051"
    admin_listen: str = "127.0.0.1:50052"
    base_port: int = 8000
    devices: tuple[str, ...] = ("cpu",)
    model: Path | None = None
    labels: Path | None = None
    model_name: str = "flowers"
    repository: Path | None = None
    """A model repository to serve as it is, instead of one written from `model` (tests, custom models)."""
    with_envoy: bool = True
    workdir: Path | None = None
    host: str = "127.0.0.1"
    lb_policy: str = "round_robin"
    max_batch_size: int = 32
    dynamic_batching: bool = True
    max_queue_delay_us: int = 500
    intra_op_threads: int = 1
    wires: tuple[str, ...] = WIRES
    """The inputs each instance offers: the model as it is ("fp32") and its Python-backend
    variants ("uint8", "jpeg"), each a stub process of its own per instance (about 110 MB)."""
    ready_timeout_s: float = 60.0
    stop_timeout_s: float = 10.0
    envoy_concurrency: int = 1
    niceness: int = 0
    """Scheduling priority added to the Triton and Envoy processes. The window's embedded stack uses 10:
    on a laptop's few cores the window stays responsive while the servers take what is left."""
    envoy_log_level: str = "warn"
    restart: bool = True
    """Restart a Triton or Envoy that died (`flowerdemo serve --no-restart` turns it off)."""
    max_restarts: int = 5
    """Consecutive restarts of one process before it is left failed (reset after a minute up)."""
    drain_timeout_s: float = 30.0
    """How long a removed instance may take to finish its requests before it is stopped anyway."""
    supervise_interval_s: float = 0.25
    tls_cert: Path | None = None
    """PEM certificate: Envoy's gRPC and HTTP listeners speak TLS only (with `tls_key`)."""
    tls_key: Path | None = None


def resolve_model(settings: StackSettings) -> tuple[Path, Path]:
    """The ONNX file and labels file the settings name; StackError when either is missing."""
    if settings.model is None:
        from flowerdemo.resources import bundled_model_dir

        source = bundled_model_dir()
    else:
        source = Path(settings.model)
    if source.is_dir():
        candidates = sorted(source.glob("*.onnx"))
        if not candidates:
            raise StackError(f"model: no .onnx file in {source}")
        if len(candidates) > 1:
            names = ", ".join(c.name for c in candidates)
            raise StackError(f"model: {source} holds several .onnx files ({names}); name one")
        onnx_path = candidates[0]
    elif source.suffix == ".onnx" or source.exists():
        onnx_path = source
    else:
        raise StackError(f"model: {source} is neither an .onnx file nor a folder")
    if not onnx_path.is_file():
        raise StackError(f"model: model file {onnx_path.resolve()} not found")
    labels = (
        Path(settings.labels) if settings.labels is not None else onnx_path.parent / ("labels.txt")
    )
    if not labels.is_file():
        hint = (
            "" if settings.labels is not None else " (name one, or put labels.txt beside the model)"
        )
        raise StackError(f"model: labels file {labels.resolve()} not found{hint}")
    return onnx_path, labels


def write_model_repositories(
    settings: StackSettings, devices: tuple[str, ...], workdir: Path
) -> dict[str, Path]:
    """The model repository for each kind of instance the devices ask for ("cpu", "gpu"): the
    given `settings.repository` as it is, or one written from the model into `workdir`."""
    s = settings
    # Both kinds when the devices mix them, so an instance added later finds its repository.
    kinds = {"cpu" if device == "cpu" else "gpu" for device in devices}
    repositories: dict[str, Path] = {}
    if s.repository is not None:
        if not (Path(s.repository) / s.model_name).is_dir():
            raise StackError(
                f"model: repository {s.repository} has no model folder '{s.model_name}'"
            )
        repositories = dict.fromkeys(kinds, Path(s.repository))
        kinds = set()
    else:
        onnx_path, labels_path = resolve_model(s)
    for kind in sorted(kinds):
        options = RepositoryOptions(
            model_name=s.model_name,
            max_batch_size=s.max_batch_size,
            dynamic_batching=s.dynamic_batching,
            max_queue_delay_us=s.max_queue_delay_us,
            instance_kind=kind,
            # Each GPU instance sees only its own device (or MIG slice), as ordinal 0.
            gpus=(0,),
            intra_op_threads=s.intra_op_threads,
            wires=s.wires,
        )
        root = workdir / f"repository-{kind}"
        try:
            write_repository(onnx_path, labels_path, root, options, flavour="python")
        except RepositoryError as error:
            raise StackError(f"model: {error}") from error
        repositories[kind] = root
    return repositories
