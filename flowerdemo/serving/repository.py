"""Triton model repositories for an ONNX classifier and its labels file.

Three flavours of the same model:
- "python": a Python-backend model that runs the ONNX file with ONNX Runtime (CPU, or the CUDA
  provider when the instance is on a GPU and ONNX Runtime has it). This is what the local stack
  serves, because the tritonserver binary bundled with nvidia-pytriton has no ONNX backend.
- "onnx": the `onnxruntime_onnx` platform of NVIDIA's Triton containers.
- "tensorrt": the `tensorrt_plan` platform; the plan is built from the ONNX file with `trtexec`
  (see `trtexec_command`) on the GPU that will run it.

Every flavour's output names `label_filename`, so a client asking for `class_count=k` gets
"score:index:label" strings (Triton's classification extension).
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

FLAVOURS = ("python", "onnx", "tensorrt")
LABELS_FILE_NAME = "labels.txt"
TRITON_MODEL_TEMPLATE = "triton_model.py"

# ONNX tensor element types (as ONNX Runtime spells them) to Triton's config data types.
_ONNX_TO_TRITON = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(double)": "TYPE_FP64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(bool)": "TYPE_BOOL",
}


class RepositoryError(ValueError):
    """A model, labels file or option that cannot make a working repository."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, Triton data type and dims without the batch dimension."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class OnnxModelInfo:
    path: Path
    input: TensorSpec
    output: TensorSpec
    # True when the first dimension of both tensors is symbolic, so Triton may batch requests.
    batched: bool

    @property
    def class_count(self) -> int:
        return self.output.dims[-1]


@dataclass(frozen=True)
class RepositoryOptions:
    """What goes into `config.pbtxt` besides the tensors.

    `instance_kind` is "cpu" or "gpu"; with "gpu", `gpus` lists the device ordinals *as the
    Triton process sees them* (0 when CUDA_VISIBLE_DEVICES narrows it to one device or MIG slice).
    """

    model_name: str = "flowers"
    max_batch_size: int = 32
    dynamic_batching: bool = True
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 500
    instance_kind: str = "cpu"
    instance_count: int = 1
    gpus: tuple[int, ...] = (0,)
    input_format: str = "FORMAT_NCHW"
    # ONNX Runtime threads per model instance (Python flavour only).
    intra_op_threads: int = 1
    # Serve the newest `num_versions` versions found in the model folder.
    num_versions: int = 1
    version: int = 1

    def check(self) -> None:
        if not self.model_name or "/" in self.model_name or self.model_name.startswith("."):
            raise RepositoryError(f"model name {self.model_name!r}: must be a plain folder name")
        if self.max_batch_size < 0:
            raise RepositoryError(f"max_batch_size {self.max_batch_size}: must be 0 or more")
        if self.instance_kind not in ("cpu", "gpu"):
            raise RepositoryError(f"instance kind {self.instance_kind!r}: must be 'cpu' or 'gpu'")
        if self.instance_count < 1:
            raise RepositoryError(f"instance count {self.instance_count}: must be 1 or more")
        if self.input_format not in ("FORMAT_NCHW", "FORMAT_NHWC", "FORMAT_NONE"):
            raise RepositoryError(f"input format {self.input_format!r}: not a Triton format")
        bad_sizes = [
            size for size in self.preferred_batch_sizes if not 0 < size <= self.max_batch_size
        ]
        if bad_sizes:
            raise RepositoryError(
                f"preferred batch sizes {bad_sizes}: must lie in 1..max_batch_size "
                f"({self.max_batch_size})"
            )
        if self.intra_op_threads < 1 or self.num_versions < 1 or self.version < 1:
            raise RepositoryError("intra_op_threads, num_versions and version must be 1 or more")


def _tensor_spec(node: object, where: Path, role: str) -> tuple[TensorSpec, bool]:
    name = str(getattr(node, "name", ""))
    onnx_type = str(getattr(node, "type", ""))
    shape = list(getattr(node, "shape", []))
    data_type = _ONNX_TO_TRITON.get(onnx_type)
    if data_type is None:
        raise RepositoryError(f"{where}: {role} {name!r} has type {onnx_type}, not supported")
    if not shape:
        raise RepositoryError(f"{where}: {role} {name!r} is a scalar; expected [batch, ...]")
    batched = not isinstance(shape[0], int)
    rest = shape[1:] if batched else shape
    if not all(isinstance(dim, int) and dim > 0 for dim in rest):
        raise RepositoryError(
            f"{where}: {role} {name!r} has shape {shape}; only the first (batch) dimension may "
            "be symbolic"
        )
    return TensorSpec(name=name, data_type=data_type, dims=tuple(int(d) for d in rest)), batched


def inspect_onnx(path: Path) -> OnnxModelInfo:
    """Read the single input and single output of an ONNX classifier."""
    path = Path(path)
    if not path.is_file():
        raise RepositoryError(f"model file {path}: not found")
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise RepositoryError(
            f"reading {path} needs onnxruntime (install flowerdemo[serve]): {error}"
        ) from error
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # ONNX Runtime raises its own exception types
        raise RepositoryError(f"model file {path}: ONNX Runtime cannot load it: {error}") from error
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise RepositoryError(
            f"model file {path}: expected one input and one output, found "
            f"{[i.name for i in inputs]} -> {[o.name for o in outputs]}"
        )
    input_spec, input_batched = _tensor_spec(inputs[0], path, "input")
    output_spec, output_batched = _tensor_spec(outputs[0], path, "output")
    return OnnxModelInfo(
        path=path, input=input_spec, output=output_spec, batched=input_batched and output_batched
    )


def read_labels(path: Path) -> list[str]:
    """One label per line, line k = class k; blank trailing lines are ignored."""
    path = Path(path)
    if not path.is_file():
        raise RepositoryError(f"labels file {path}: not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise RepositoryError(f"labels file {path}: cannot read it: {error}") from error
    while lines and not lines[-1].strip():
        lines.pop()
    blank = [number for number, line in enumerate(lines, start=1) if not line.strip()]
    if blank:
        raise RepositoryError(f"labels file {path}: blank label on line(s) {blank[:5]}")
    if not lines:
        raise RepositoryError(f"labels file {path}: no labels")
    return lines


def check_labels(info: OnnxModelInfo, labels: list[str], labels_path: Path) -> None:
    if len(info.output.dims) != 1:
        raise RepositoryError(
            f"model file {info.path}: output {info.output.name!r} has dims {list(info.output.dims)}"
            "; a classifier's output must be [batch, classes]"
        )
    if len(labels) != info.class_count:
        raise RepositoryError(
            f"labels file {labels_path} has {len(labels)} labels but model {info.path} output "
            f"{info.output.name!r} has {info.class_count} classes"
        )


def _dims(dims: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def render_config(
    info: OnnxModelInfo,
    options: RepositoryOptions,
    *,
    flavour: str,
) -> str:
    """The `config.pbtxt` text for `info` in the given flavour."""
    if flavour not in FLAVOURS:
        raise RepositoryError(f"repository flavour {flavour!r}: must be one of {FLAVOURS}")
    options.check()
    max_batch_size = options.max_batch_size if info.batched else 0
    lines = [f'name: "{options.model_name}"']
    if flavour == "python":
        lines.append('backend: "python"')
    elif flavour == "onnx":
        lines += ['platform: "onnxruntime_onnx"', 'default_model_filename: "model.onnx"']
    else:
        lines += ['platform: "tensorrt_plan"', 'default_model_filename: "model.plan"']
    lines.append(f"max_batch_size: {max_batch_size}")
    image_format = options.input_format if len(info.input.dims) == 3 else "FORMAT_NONE"
    lines += [
        "input [",
        "  {",
        f'    name: "{info.input.name}"',
        f"    data_type: {info.input.data_type}",
        f"    format: {image_format}",
        f"    dims: {_dims(info.input.dims)}",
        "  }",
        "]",
        "output [",
        "  {",
        f'    name: "{info.output.name}"',
        f"    data_type: {info.output.data_type}",
        f"    dims: {_dims(info.output.dims)}",
        f'    label_filename: "{LABELS_FILE_NAME}"',
        "  }",
        "]",
    ]
    if options.dynamic_batching and max_batch_size > 0:
        lines.append("dynamic_batching {")
        if options.preferred_batch_sizes:
            sizes = ", ".join(str(size) for size in options.preferred_batch_sizes)
            lines.append(f"  preferred_batch_size: [ {sizes} ]")
        lines.append(f"  max_queue_delay_microseconds: {options.max_queue_delay_us}")
        lines.append("}")
    lines += ["instance_group [", "  {", f"    count: {options.instance_count}"]
    if options.instance_kind == "gpu":
        gpus = ", ".join(str(gpu) for gpu in options.gpus)
        lines += ["    kind: KIND_GPU", f"    gpus: [ {gpus} ]"]
    else:
        lines.append("    kind: KIND_CPU")
    lines += ["  }", "]"]
    lines += ["version_policy: {", f"  latest: {{ num_versions: {options.num_versions} }}", "}"]
    if flavour == "python":
        lines += [
            _parameter("onnx_file", "model.onnx"),
            _parameter("intra_op_threads", str(options.intra_op_threads)),
        ]
    return "\n".join(lines) + "\n"


def _parameter(key: str, value: str) -> str:
    return f'parameters: {{ key: "{key}" value: {{ string_value: "{value}" }} }}'


@dataclass(frozen=True)
class WrittenRepository:
    """A repository on disk: `root` is what `--model-repository` takes."""

    root: Path
    model_dir: Path
    info: OnnxModelInfo
    flavour: str
    # For "tensorrt": the command that builds `model.plan`; empty otherwise.
    build_command: tuple[str, ...] = ()


def write_repository(
    onnx_path: Path,
    labels_path: Path,
    root: Path,
    options: RepositoryOptions | None = None,
    *,
    flavour: str = "python",
    trtexec: str = "trtexec",
) -> WrittenRepository:
    """Write `<root>/<model_name>/{config.pbtxt, labels.txt, <version>/...}`.

    Raises RepositoryError naming the file at fault when the model cannot be read, the labels
    do not match the output, or an option is out of range. Existing files of the same model are
    replaced; other models in `root` are left alone.
    """
    options = options or RepositoryOptions()
    options.check()
    info = inspect_onnx(Path(onnx_path))
    labels = read_labels(Path(labels_path))
    check_labels(info, labels, Path(labels_path))
    config = render_config(info, options, flavour=flavour)

    root = Path(root)
    model_dir = root / options.model_name
    version_dir = model_dir / str(options.version)
    version_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(config, encoding="utf-8")
    (model_dir / LABELS_FILE_NAME).write_text("\n".join(labels) + "\n", encoding="utf-8")

    build_command: tuple[str, ...] = ()
    if flavour == "python":
        shutil.copyfile(info.path, version_dir / "model.onnx")
        template = resources.files("flowerdemo.serving") / TRITON_MODEL_TEMPLATE
        (version_dir / "model.py").write_text(template.read_text(encoding="utf-8"), "utf-8")
    elif flavour == "onnx":
        shutil.copyfile(info.path, version_dir / "model.onnx")
    else:
        # The ONNX file stays beside the config so the plan can be rebuilt on the target GPU:
        # a TensorRT engine only runs on the GPU model and TensorRT version that built it.
        shutil.copyfile(info.path, model_dir / "model.onnx")
        build_command = trtexec_command(
            info,
            onnx_file=model_dir / "model.onnx",
            plan_file=version_dir / "model.plan",
            max_batch_size=options.max_batch_size,
            trtexec=trtexec,
        )
        (model_dir / "BUILD_ENGINE.txt").write_text(
            "# Build the TensorRT engine on the GPU (or MIG slice) that will serve it:\n"
            + shlex.join(build_command)
            + "\n",
            encoding="utf-8",
        )
    return WrittenRepository(
        root=root, model_dir=model_dir, info=info, flavour=flavour, build_command=build_command
    )


def trtexec_command(
    info: OnnxModelInfo,
    *,
    onnx_file: Path | str,
    plan_file: Path | str,
    max_batch_size: int,
    trtexec: str = "trtexec",
) -> tuple[str, ...]:
    """`trtexec --onnx=... --fp16 --saveEngine=...`, with a batch range when the model batches."""
    command = [trtexec, f"--onnx={onnx_file}", "--fp16", f"--saveEngine={plan_file}"]
    if info.batched and max_batch_size > 0:
        shape = "x".join(str(d) for d in info.input.dims)
        optimum = max(1, max_batch_size // 2)
        command += [
            f"--minShapes={info.input.name}:1x{shape}",
            f"--optShapes={info.input.name}:{optimum}x{shape}",
            f"--maxShapes={info.input.name}:{max_batch_size}x{shape}",
        ]
    return tuple(command)
