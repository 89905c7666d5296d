"""Triton model repositories for an ONNX classifier and its labels file.

Three flavours of the same model:
- "python": a Python-backend model that runs the ONNX file with ONNX Runtime (CPU, or the CUDA
  provider when the instance is on a GPU and ONNX Runtime has it). This is what the local stack
  serves, because the tritonserver binary bundled with nvidia-pytriton has no ONNX backend.
- "onnx": the `onnxruntime_onnx` platform of NVIDIA's Triton containers.
- "tensorrt": the `tensorrt_plan` platform; the plan is built from the ONNX file with `trtexec`
  (see `trtexec_command`) on the GPU that will run it.

Every flavour's output names `label_filename`, so a client asking for `class_count=k` gets
"score:index:label" strings (Triton's classification extension). Every config states the
network's pixel scaling as the parameter `flowerdemo_scaling`, which the client follows.

Wire variants (python flavour): beside `<model>` (the network's own input, FP32 NCHW for the
bundled model, still the default) the repository offers `<model>_uint8` (raw RGB pixels, UINT8
NHWC [H, W, 3] after the client's resize and crop, scaled on the server: a quarter of the bytes)
and `<model>_jpeg` (one encoded image per row, BYTES [1], decoded, resized and scaled on the
server: about 1/40 of the bytes at the client's JPEG quality). Why separate models, each one
Python-backend model that converts its input and runs the ONNX file in the same process:
- a client and perf_analyzer see an ordinary one-input classifier, validated as any other, and
  the variant is chosen by name (`--wire` maps to `<model>_<wire>`);
- no ensemble hop: Triton's ensemble (preprocess model -> network model) would copy the FP32
  tensor through the stubs' shared memory once more per request, which costs more than the
  bytes saved on a loopback;
- one model with several optional inputs would split dynamic batches by which input is set and
  break the one-input contract every Triton image client assumes.
The price is one more ONNX Runtime session and stub process per variant per Triton instance:
measured on the 2-core machine, one instance took 77 MB (proportional set size) with the network
alone, 212 MB with both in-process variants, 138 MB with both as ensembles; at concurrency 1 the
in-process variants answered about 1 ms sooner (under heavy load, so a rough figure). The onnx and tensorrt flavours (NVIDIA's containers,
where the network runs natively on the GPU) write each variant as Triton's ensemble instead:
`<model>_<wire>_preprocess` (Python backend, CPU: decode, resize, scale) then `<model>`, so the
GPU's batches mix every wire's requests (render_ensemble_configs).
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

FLAVOURS = ("python", "onnx", "tensorrt")
WIRES = ("fp32", "uint8", "jpeg")
"""fp32: the network's own input (whatever its data type); uint8 and jpeg: the variants."""
SCALINGS = ("none", "inception", "vgg", "imagenet")
# The variants' config names (the parameters the client reads are in flowerdemo.core.model_spec).
SCALING_PARAMETER = "flowerdemo_scaling"
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
    # The network's pixel scaling (the bundled model's card: inception), stated in every config.
    scaling: str = "inception"
    # Which wire formats to serve; the python flavour writes `<model>_<wire>` for each variant.
    wires: tuple[str, ...] = WIRES

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
        if self.scaling not in SCALINGS:
            raise RepositoryError(f"scaling {self.scaling!r}: must be one of {SCALINGS}")
        problem = wires_problem(self.wires)
        if problem is not None:
            raise RepositoryError(f"wires {list(self.wires)}: {problem}")


def wires_problem(wires: Sequence[str]) -> str | None:
    """Why `wires` cannot be offered (each of WIRES, fp32 always among them), or None."""
    if any(wire not in WIRES for wire in wires) or "fp32" not in wires:
        return f"must include 'fp32' and be among {list(WIRES)}"
    return None


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


def variant_name(model_name: str, wire: str) -> str:
    """The served name of `model_name` over `wire`: the model itself for fp32."""
    return model_name if wire == "fp32" else f"{model_name}_{wire}"


def _onnx_layout(info: OnnxModelInfo, options: RepositoryOptions) -> tuple[str, int, int, int]:
    """(layout, channels, height, width) of the network's image input, for the variants."""
    dims = info.input.dims
    if len(dims) != 3:
        raise RepositoryError(
            f"model file {info.path}: input {info.input.name!r} has dims {list(dims)}; the uint8 "
            "and jpeg variants need an image input [C, H, W] or [H, W, C]"
        )
    if options.input_format == "FORMAT_NHWC" or (
        options.input_format == "FORMAT_NONE" and dims[-1] in (1, 3) and dims[0] not in (1, 3)
    ):
        return "NHWC", dims[2], dims[0], dims[1]
    return "NCHW", dims[0], dims[1], dims[2]


def _variant_input(
    info: OnnxModelInfo, options: RepositoryOptions, wire: str
) -> tuple[str, str, tuple[int, ...], list[str]]:
    """A wire variant's input (data type, format, dims) and the parameters that say what it is."""
    layout, channels, height, width = _onnx_layout(info, options)
    if channels != 3:
        raise RepositoryError(
            f"model file {info.path}: the uint8 and jpeg variants need an RGB input, "
            f"found {channels} channel(s)"
        )
    parameters = [
        _parameter("flowerdemo_input", wire),
        _parameter("flowerdemo_onnx_layout", layout),
    ]
    if wire == "uint8":
        return "TYPE_UINT8", "FORMAT_NHWC", (height, width, 3), parameters
    parameters += [
        _parameter("flowerdemo_image_height", str(height)),
        _parameter("flowerdemo_image_width", str(width)),
    ]
    return "TYPE_STRING", "FORMAT_NONE", (1,), parameters


def render_config(
    info: OnnxModelInfo,
    options: RepositoryOptions,
    *,
    flavour: str,
    wire: str = "fp32",
) -> str:
    """The `config.pbtxt` text for `info` in the given flavour, for one wire format."""
    if flavour not in FLAVOURS:
        raise RepositoryError(f"repository flavour {flavour!r}: must be one of {FLAVOURS}")
    if wire not in WIRES or (wire != "fp32" and flavour != "python"):
        raise RepositoryError(
            f"wire {wire!r}: the {flavour} flavour serves its variants as ensembles "
            "(render_ensemble_configs)"
            if wire in WIRES
            else f"wire {wire!r}: must be one of {WIRES}"
        )
    options.check()
    max_batch_size = options.max_batch_size if info.batched else 0
    lines = [f'name: "{variant_name(options.model_name, wire)}"']
    if flavour == "python":
        lines.append('backend: "python"')
    elif flavour == "onnx":
        lines += ['platform: "onnxruntime_onnx"', 'default_model_filename: "model.onnx"']
    else:
        lines += ['platform: "tensorrt_plan"', 'default_model_filename: "model.plan"']
    lines.append(f"max_batch_size: {max_batch_size}")
    image_format = options.input_format if len(info.input.dims) == 3 else "FORMAT_NONE"
    input_type, input_dims = info.input.data_type, info.input.dims
    variant_parameters: list[str] = []
    if wire != "fp32":
        input_type, image_format, input_dims, variant_parameters = _variant_input(
            info, options, wire
        )
    lines += _tensor_block(
        "input", info.input.name, input_type, input_dims, image_format=image_format
    )
    lines += _tensor_block(
        "output", info.output.name, info.output.data_type, info.output.dims, labels=True
    )
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
    lines.append(_parameter(SCALING_PARAMETER, options.scaling))
    if flavour == "python":
        lines += [
            _parameter("onnx_file", "model.onnx"),
            _parameter("intra_op_threads", str(options.intra_op_threads)),
            *variant_parameters,
        ]
    return "\n".join(lines) + "\n"


PREPROCESSED_TENSOR = "pixels"


def preprocess_model_name(model_name: str, wire: str) -> str:
    return f"{variant_name(model_name, wire)}_preprocess"


def render_ensemble_configs(
    info: OnnxModelInfo, options: RepositoryOptions, wire: str
) -> tuple[str, str]:
    """For the onnx and tensorrt flavours: (preprocessing model config, ensemble config).

    NVIDIA's containers run the network natively (ONNX Runtime, TensorRT), so a variant is
    Triton's ensemble, as in its image ensemble example: a Python-backend model (CPU) turns the
    variant's input into the network's tensor, and the network model runs it, batching the
    variants' requests with the FP32 ones.
    """
    if wire not in WIRES or wire == "fp32":
        raise RepositoryError(f"wire {wire!r}: an ensemble variant is uint8 or jpeg")
    options.check()
    max_batch_size = options.max_batch_size if info.batched else 0
    input_type, image_format, input_dims, variant_parameters = _variant_input(info, options, wire)
    variant_input = _tensor_block(
        "input", info.input.name, input_type, input_dims, image_format=image_format
    )
    scaling = _parameter(SCALING_PARAMETER, options.scaling)
    preprocess_name = preprocess_model_name(options.model_name, wire)
    preprocess = [
        f'name: "{preprocess_name}"',
        'backend: "python"',
        f"max_batch_size: {max_batch_size}",
        *variant_input,
        *_tensor_block("output", PREPROCESSED_TENSOR, info.input.data_type, info.input.dims),
        # Decoding and scaling are CPU work, wherever the network runs.
        "instance_group [",
        "  {",
        f"    count: {options.instance_count}",
        "    kind: KIND_CPU",
        "  }",
        "]",
        _parameter("flowerdemo_role", "preprocess"),
        scaling,
        *variant_parameters,
    ]
    ensemble = [
        f'name: "{variant_name(options.model_name, wire)}"',
        'platform: "ensemble"',
        f"max_batch_size: {max_batch_size}",
        *variant_input,
        *_tensor_block(
            "output", info.output.name, info.output.data_type, info.output.dims, labels=True
        ),
        "ensemble_scheduling {",
        "  step [",
        "    {",
        f'      model_name: "{preprocess_name}"',
        "      model_version: -1",
        f'      input_map {{ key: "{info.input.name}" value: "{info.input.name}" }}',
        f'      output_map {{ key: "{PREPROCESSED_TENSOR}" value: "{PREPROCESSED_TENSOR}" }}',
        "    },",
        "    {",
        f'      model_name: "{options.model_name}"',
        "      model_version: -1",
        f'      input_map {{ key: "{info.input.name}" value: "{PREPROCESSED_TENSOR}" }}',
        f'      output_map {{ key: "{info.output.name}" value: "{info.output.name}" }}',
        "    }",
        "  ]",
        "}",
        scaling,
        *[p for p in variant_parameters if "image_" in p],
    ]
    return "\n".join(preprocess) + "\n", "\n".join(ensemble) + "\n"


def _tensor_block(
    kind: str,
    name: str,
    data_type: str,
    dims: tuple[int, ...],
    *,
    image_format: str | None = None,
    labels: bool = False,
) -> list[str]:
    """One `input [...]` or `output [...]` block of a config.pbtxt (kind: "input" or "output")."""
    lines = [f"{kind} [", "  {", f'    name: "{name}"', f"    data_type: {data_type}"]
    if image_format is not None:
        lines.append(f"    format: {image_format}")
    lines.append(f"    dims: {_dims(dims)}")
    if labels:
        lines.append(f'    label_filename: "{LABELS_FILE_NAME}"')
    return [*lines, "  }", "]"]


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
    # Every model written, the network model first, then its wire variants (python flavour).
    model_names: tuple[str, ...] = ()


def write_repository(
    onnx_path: Path,
    labels_path: Path,
    root: Path,
    options: RepositoryOptions | None = None,
    *,
    flavour: str = "python",
    trtexec: str = "trtexec",
) -> WrittenRepository:
    """Write `<root>/<model_name>/{config.pbtxt, labels.txt, <version>/...}`, and for the python
    flavour the same for each wire variant `<model_name>_<wire>` in `options.wires`.

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
    model_names = [options.model_name]
    template = resources.files("flowerdemo.serving") / TRITON_MODEL_TEMPLATE
    if flavour != "python":
        for wire in options.wires:
            if wire == "fp32":
                continue
            preprocess_config, ensemble_config = render_ensemble_configs(info, options, wire)
            name = variant_name(options.model_name, wire)
            preprocess_name = preprocess_model_name(options.model_name, wire)
            (root / preprocess_name / "1").mkdir(parents=True, exist_ok=True)
            (root / preprocess_name / "config.pbtxt").write_text(preprocess_config, "utf-8")
            (root / preprocess_name / "1" / "model.py").write_text(
                template.read_text(encoding="utf-8"), "utf-8"
            )
            # An ensemble has no files of its own, but Triton wants its version folder.
            (root / name / str(options.version)).mkdir(parents=True, exist_ok=True)
            (root / name / "config.pbtxt").write_text(ensemble_config, "utf-8")
            (root / name / LABELS_FILE_NAME).write_text("\n".join(labels) + "\n", "utf-8")
            model_names += [name, preprocess_name]
    if flavour == "python":
        shutil.copyfile(info.path, version_dir / "model.onnx")
        model_code = template.read_text(encoding="utf-8")
        (version_dir / "model.py").write_text(model_code, "utf-8")
        for wire in options.wires:
            if wire == "fp32":
                continue
            name = variant_name(options.model_name, wire)
            variant_version_dir = root / name / str(options.version)
            variant_version_dir.mkdir(parents=True, exist_ok=True)
            (root / name / "config.pbtxt").write_text(
                render_config(info, options, flavour=flavour, wire=wire), encoding="utf-8"
            )
            (root / name / LABELS_FILE_NAME).write_text("\n".join(labels) + "\n", encoding="utf-8")
            _link_or_copy(version_dir / "model.onnx", variant_version_dir / "model.onnx")
            (variant_version_dir / "model.py").write_text(model_code, "utf-8")
            model_names.append(name)
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
        root=root,
        model_dir=model_dir,
        info=info,
        flavour=flavour,
        build_command=build_command,
        model_names=tuple(model_names),
    )


def _link_or_copy(source: Path, target: Path) -> None:
    """The variants share the network file: a hard link where the file system allows it."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


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
