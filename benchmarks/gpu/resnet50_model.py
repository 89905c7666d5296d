"""ResNet-50 FP16 on CUDA as a Triton Python-backend model, and the repository that serves it.

One file, three uses:
- Triton's Python-backend stub runs it as `<repo>/resnet50/1/model.py` (`TritonPythonModel`);
- the GPU benchmark imports it to write that repository (`write_repository`), which needs
  neither torch nor Triton;
- `python resnet50_model.py --cpu-smoke | --gpu-smoke` checks the network without Triton.

The network is ResNet-50 v1.5 with a 102-class head and a softmax: the training package's
definition (`flowerdemo/training/resnet.py`, copied beside `model.py` in the repository), with
exactly torchvision's module names (a torchvision `resnet50(num_classes=102)` state dict loads
as it is; `--gpu-smoke` checks that against torchvision where it is installed). Weights are random (seeded)
unless the config's `weights` parameter names a state dict. On the GPU it runs in FP16,
channels_last, with every BatchNorm folded into its convolution. What keeps it fast under load
(a naive eager model collapsed at concurrency 16 on the H100):
- one CUDA graph per batch bucket (1, 2, 4, ... 128), captured and warmed at load, so a batch
  costs one graph launch instead of ~160 kernel launches;
- each dynamic batch is padded up to its bucket, so no new shape ever reaches cuDNN under load
  (every new shape would otherwise trigger a fresh autotune); the config's
  `preferred_batch_size` is the same bucket list, so Triton mostly forms exact buckets;
- inputs (FP32, NCHW, as clients send them) are copied request by request into one pinned
  buffer, each slice's host-to-device copy queued as soon as it is there, and converted to FP16
  and channels_last on the GPU, inside the graph.
With `input_dtype="uint8"` the model takes raw pixels instead (TYPE_UINT8, NCHW, 0..255: a
quarter of FP32's bytes on every hop) and scales them on the GPU inside the graph,
x / 127.5 - 1 (the bundled model's "inception" scaling), in FP16.
On the CPU (`KIND_CPU`, for tests) the same network runs eagerly in FP32.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODEL_NAME = "resnet50"
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
NUM_CLASSES = 102
IMAGE_SHAPE = (3, 224, 224)
INPUT_DTYPES = ("fp32", "uint8")
DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
WARMUP_RUNS = 3
LABELS_FILE_NAME = "labels.txt"
RESNET_FILE_NAME = "resnet.py"
# The one ResNet-50 definition, in the training package; copied into the model folder.
RESNET_SOURCE = (
    Path(__file__).resolve().parent.parent.parent / "flowerdemo" / "training" / "resnet.py"
)


# ----- the network ---------------------------------------------------------------------------


def _resnet_definition() -> Any:
    """The training package's ResNet-50 module (`flowerdemo/training/resnet.py`, torch only):
    in a Triton model folder the copy that `write_repository` put beside this file, else the
    checkout's. Loaded from its file: the flowerdemo package is not importable in the stub."""
    import importlib.util

    name = "flowerdemo_resnet50_definition"
    if name in sys.modules:
        return sys.modules[name]
    beside = Path(__file__).resolve().parent / RESNET_FILE_NAME
    path = beside if beside.is_file() else RESNET_SOURCE
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the ResNet-50 definition from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def build_resnet50(num_classes: int = NUM_CLASSES) -> Any:
    """ResNet-50 v1.5 (stride on the 3x3 convolution), named as torchvision names it: the
    training package's definition, the one the flower ResNet-50 was trained with."""
    return _resnet_definition().ResNet50(num_classes)


def randomize_batchnorm(model: Any, seed: int) -> None:
    """Give every BatchNorm non-trivial statistics, so folding them is really exercised."""
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            count = module.num_features
            with torch.no_grad():
                module.weight.copy_(0.25 + 0.5 * torch.rand(count, generator=generator))
                module.bias.copy_(0.1 * torch.randn(count, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(count, generator=generator))
                module.running_var.copy_(1.0 + torch.rand(count, generator=generator))


def load_weights(model: Any, path: Path) -> None:
    """A state dict file (or its `.part0`, `.part1`, ... pieces) with torchvision's key names."""
    import torch

    path = Path(path)
    if path.is_file():
        data = path.read_bytes()
    else:
        parts = sorted(
            path.parent.glob(f"{path.name}.part*"), key=lambda p: int(p.suffix[len(".part") :])
        )
        if not parts:
            raise FileNotFoundError(f"weights {path}: no such file (nor {path.name}.part0...)")
        data = b"".join(part.read_bytes() for part in parts)
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    state = {
        k.removeprefix("module.").removeprefix("classifier."): v.float()
        if v.is_floating_point()
        else v
        for k, v in state.items()
    }
    model.load_state_dict(state, strict=True)


def fold_batchnorm(model: Any) -> Any:
    """Fold each BatchNorm into the convolution before it (eval mode only); returns the model."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()

    def fold(parent: Any, conv_name: str, bn_name: str) -> None:
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(parent, bn_name, nn.Identity())

    fold(model, "conv1", "bn1")
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            for index in (1, 2, 3):
                fold(block, f"conv{index}", f"bn{index}")
            if block.downsample is not None:
                fold(block.downsample, "0", "1")
    return model


def make_network(weights: str = "", seed: int = 0) -> Any:
    """The served network on the CPU in FP32, eval mode, BatchNorm folded."""
    import torch

    torch.manual_seed(seed)
    model = build_resnet50()
    if weights:
        load_weights(model, Path(weights))
    else:
        randomize_batchnorm(model, seed)
    return fold_batchnorm(model.eval())


def bucket_for(count: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `count` images."""
    for bucket in buckets:
        if bucket >= count:
            return bucket
    raise ValueError(f"a batch of {count} is larger than the largest bucket {buckets[-1]}")


class Runner:
    """Runs batches of NCHW images (FP32, or UINT8 pixels scaled here) through the network;
    returns FP32 probabilities."""

    def __init__(
        self,
        network: Any,
        *,
        device: str,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        copy_threads: int = 4,
        cudnn_benchmark: bool = True,
        use_graphs: bool = True,
        input_dtype: str = "fp32",
    ) -> None:
        import torch

        if input_dtype not in INPUT_DTYPES:
            raise ValueError(f"input_dtype {input_dtype!r}: one of {', '.join(INPUT_DTYPES)}")
        self.torch = torch
        self.uint8 = input_dtype == "uint8"
        host_dtype = torch.uint8 if self.uint8 else torch.float32
        self.device = torch.device(device)
        self.buckets = tuple(sorted(buckets))
        self.max_batch = self.buckets[-1]
        torch.set_num_threads(max(1, copy_threads))
        self.cuda = self.device.type == "cuda"
        self.graphs: dict[int, Any] = {}
        self.outputs: dict[int, Any] = {}
        self.events: tuple[Any, ...] = ()
        if not self.cuda:
            self.network = network.float().eval()
            return
        torch.cuda.set_device(self.device)
        torch.backends.cudnn.benchmark = cudnn_benchmark
        self.network = network.to(self.device).half().to(memory_format=torch.channels_last).eval()
        self.stream = torch.cuda.Stream(self.device)
        self.host_in = torch.empty((self.max_batch, *IMAGE_SHAPE), dtype=host_dtype).pin_memory()
        self.host_out = torch.empty((self.max_batch, NUM_CLASSES), dtype=torch.float32).pin_memory()
        self.device_in = torch.zeros(
            (self.max_batch, *IMAGE_SHAPE), dtype=host_dtype, device=self.device
        )
        # The weights and the zeroed input were made on the default stream; ours reads them.
        torch.cuda.synchronize(self.device)
        self.load_seconds: dict[int, float] = {}
        with torch.inference_mode(), torch.cuda.stream(self.stream):
            # Warm every bucket first (cuDNN picks its algorithms here), then capture.
            for bucket in self.buckets:
                started = time.perf_counter()
                for _ in range(WARMUP_RUNS):
                    self._forward(self.device_in[:bucket])
                self.stream.synchronize()
                self.load_seconds[bucket] = time.perf_counter() - started
        if use_graphs:
            for bucket in self.buckets:
                graph = torch.cuda.CUDAGraph()
                # thread_local: the stub's own threads may touch CUDA while we capture.
                capture = torch.cuda.graph(
                    graph, stream=self.stream, capture_error_mode="thread_local"
                )
                with torch.inference_mode(), capture:
                    output = self._forward(self.device_in[:bucket])
                self.graphs[bucket] = graph
                self.outputs[bucket] = output
            with torch.cuda.stream(self.stream):
                for bucket in self.buckets:
                    self.graphs[bucket].replay()
            self.stream.synchronize()

    def enable_timing(self) -> None:
        """Record CUDA events around each batch's input copies, network and output copy, so
        `last_gpu_ms()` can tell device time from host time (a few microseconds a batch)."""
        if self.cuda and not self.events:
            self.events = tuple(self.torch.cuda.Event(enable_timing=True) for _ in range(4))

    def last_gpu_ms(self) -> tuple[float, float]:
        """(network, whole span from the first input copy to the end of the output copy) of
        the last batch, in ms of device time; (0, 0) without timing. Call after `run`."""
        if not self.events:
            return 0.0, 0.0
        start, copied, computed, end = self.events
        return copied.elapsed_time(computed), start.elapsed_time(end)

    def _forward(self, batch: Any) -> Any:
        torch = self.torch
        if self.cuda:
            batch = batch.to(torch.float16)
        if self.uint8:
            batch = batch / 127.5 - 1.0
        if self.cuda:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return torch.softmax(self.network(batch).float(), dim=1)

    def run(self, arrays: Sequence[Any]) -> Any:
        """One batch made of `arrays` (each [k, 3, 224, 224], float32 or uint8 as the runner
        takes them); returns [sum k, 102] float32."""
        import numpy as np

        torch = self.torch
        count = sum(int(a.shape[0]) for a in arrays)
        if count > self.max_batch:
            # Triton never forms a batch above max_batch_size; split anyway rather than fail.
            results: list[Any] = []
            group: list[Any] = []
            size = 0
            for array in arrays:
                if size + array.shape[0] > self.max_batch and group:
                    results.append(self.run(group))
                    group, size = [], 0
                group.append(array)
                size += array.shape[0]
            results.append(self.run(group))
            return np.concatenate(results, axis=0)
        if not self.cuda:
            batch = torch.from_numpy(
                np.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]
            )
            with torch.inference_mode():
                return self._forward(batch.float()).numpy()
        bucket = bucket_for(count, self.buckets)
        events = self.events
        with torch.inference_mode(), torch.cuda.stream(self.stream):
            if events:
                events[0].record(self.stream)
            offset = 0
            for array in arrays:
                size = int(array.shape[0])
                host = self.host_in[offset : offset + size]
                host.copy_(torch.from_numpy(array))
                self.device_in[offset : offset + size].copy_(host, non_blocking=True)
                offset += size
            if events:
                events[1].record(self.stream)
            # Rows past `count` keep an earlier batch's images: their results are dropped.
            if self.graphs:
                self.graphs[bucket].replay()
                output = self.outputs[bucket]
            else:
                output = self._forward(self.device_in[:bucket])
            if events:
                events[2].record(self.stream)
            self.host_out[:count].copy_(output[:count], non_blocking=True)
            if events:
                events[3].record(self.stream)
        self.stream.synchronize()
        return self.host_out[:count].numpy().copy()


# ----- the Triton Python-backend model -------------------------------------------------------


def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    entry = config.get("parameters", {}).get(key)
    if not entry:
        return default
    return str(entry.get("string_value", default))


class ExecuteTiming:
    """Where `execute` spends its time, summed since load and written to a JSON file at most
    every 0.1 s (atomically), for the benchmark to read before and after a measurement.

    fetch: getting each request's input array; run: the runner (host copies into pinned
    memory, the device work, waiting for it); respond: building the responses; network_ms and
    span_ms: device time of the network alone and of copies + network (CUDA events). Host time
    of a batch = fetch + run + respond - span. `between_s`: from the end of one execute to the
    start of the next (the stub and Triton's own work, or no work to do)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.totals: dict[str, float] = {
            "batches": 0,
            "requests": 0,
            "images": 0,
            "fetch_s": 0.0,
            "run_s": 0.0,
            "respond_s": 0.0,
            "network_ms": 0.0,
            "span_ms": 0.0,
            "between_s": 0.0,
        }
        self.sizes: dict[str, int] = {}
        self.last_end: float | None = None
        self.written = 0.0

    def add(self, *, requests: int, images: int, began: float, **seconds: float) -> None:
        totals = self.totals
        totals["batches"] += 1
        totals["requests"] += requests
        totals["images"] += images
        for key, value in seconds.items():
            totals[key] += value
        key = str(images)
        self.sizes[key] = self.sizes.get(key, 0) + 1
        now = time.perf_counter()
        if self.last_end is not None:
            totals["between_s"] += began - self.last_end
        self.last_end = now
        if now - self.written >= 0.1:
            self.written = now
            data = {"pid": os.getpid(), "at": time.monotonic(), **totals, "sizes": self.sizes}
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps(data))
            temporary.replace(self.path)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import warnings

        import triton_python_backend_utils as pb_utils

        # Triton's input arrays live in read-only shared memory; torch warns on wrapping one.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        self.pb_utils = pb_utils
        config = json.loads(args["model_config"])
        kind = args.get("model_instance_kind", "CPU")
        device = f"cuda:{args.get('model_instance_device_id', '0')}" if kind == "GPU" else "cpu"
        buckets = tuple(
            int(b) for b in _parameter(config, "buckets", "1,2,4,8,16,32,64,128").split(",")
        )
        weights = _parameter(config, "weights", "")
        started = time.perf_counter()
        network = make_network(weights, int(_parameter(config, "seed", "0")))
        self.runner = Runner(
            network,
            device=device,
            buckets=buckets,
            copy_threads=int(_parameter(config, "copy_threads", "4")),
            cudnn_benchmark=_parameter(config, "cudnn_benchmark", "1") == "1",
            use_graphs=_parameter(config, "cuda_graphs", "1") == "1",
            input_dtype=_parameter(config, "input_dtype", "fp32"),
        )
        timing_dir = _parameter(config, "timing_dir", "")
        self.timing = (
            ExecuteTiming(
                Path(timing_dir)
                / f"{args.get('model_instance_name', 'instance')}-{os.getpid()}.json"
            )
            if timing_dir
            else None
        )
        if self.timing is not None:
            self.runner.enable_timing()
        print(
            f"resnet50 instance {args.get('model_instance_name', '?')} on {device}: "
            f"{'weights ' + weights if weights else 'random weights'}, buckets {list(buckets)}, "
            f"{'UINT8 pixels scaled on the device' if self.runner.uint8 else 'FP32 input'}, "
            f"{'CUDA graphs' if self.runner.graphs else 'eager'}, ready in "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        pb_utils = self.pb_utils
        began = time.perf_counter()
        try:
            arrays = [
                pb_utils.get_input_tensor_by_name(request, INPUT_NAME).as_numpy()
                for request in requests
            ]
            fetched = time.perf_counter()
            result = self.runner.run(arrays)
            ran = time.perf_counter()
        except Exception as error:  # every request must get an answer, even on failure
            message = f"resnet50 failed on a batch of {len(requests)} requests: {error}"
            return [
                pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
                for _ in requests
            ]
        responses = []
        offset = 0
        for array in arrays:
            size = int(array.shape[0])
            tensor = pb_utils.Tensor(OUTPUT_NAME, result[offset : offset + size])
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            offset += size
        if self.timing is not None:
            network_ms, span_ms = self.runner.last_gpu_ms()
            self.timing.add(
                requests=len(requests),
                images=offset,
                fetch_s=fetched - began,
                run_s=ran - fetched,
                respond_s=time.perf_counter() - ran,
                began=began,
                network_ms=network_ms,
                span_ms=span_ms,
            )
        return responses

    def finalize(self) -> None:
        self.runner = None  # type: ignore[assignment]


# ----- the repository ------------------------------------------------------------------------


def config_pbtxt(
    *,
    model_name: str = MODEL_NAME,
    kind: str = "gpu",
    instances: int = 1,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    max_queue_delay_us: int = 100,
    weights: str = "",
    copy_threads: int = 4,
    cudnn_benchmark: bool = True,
    cuda_graphs: bool = True,
    seed: int = 0,
    input_dtype: str = "fp32",
    timing_dir: str = "",
) -> str:
    """config.pbtxt: batch-1 requests batched dynamically into the buckets, max batch = largest."""
    buckets = tuple(sorted(buckets))
    if not buckets or buckets[0] < 1:
        raise ValueError(f"buckets {buckets}: need at least one size, each 1 or more")
    if kind not in ("gpu", "cpu"):
        raise ValueError(f"kind {kind!r}: 'gpu' or 'cpu'")
    if instances < 1:
        raise ValueError(f"instances {instances}: 1 or more")
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"input_dtype {input_dtype!r}: one of {', '.join(INPUT_DTYPES)}")
    sizes = ", ".join(str(b) for b in buckets)
    group = ["    kind: KIND_GPU", "    gpus: [ 0 ]"] if kind == "gpu" else ["    kind: KIND_CPU"]
    parameters = {
        "buckets": ",".join(str(b) for b in buckets),
        "weights": weights,
        "copy_threads": str(copy_threads),
        "cudnn_benchmark": "1" if cudnn_benchmark else "0",
        "cuda_graphs": "1" if cuda_graphs else "0",
        "seed": str(seed),
        "input_dtype": input_dtype,
        "timing_dir": timing_dir,
    }
    lines = [
        f'name: "{model_name}"',
        'backend: "python"',
        f"max_batch_size: {buckets[-1]}",
        "input [",
        "  {",
        f'    name: "{INPUT_NAME}"',
        f"    data_type: {'TYPE_UINT8' if input_dtype == 'uint8' else 'TYPE_FP32'}",
        "    format: FORMAT_NCHW",
        "    dims: [ 3, 224, 224 ]",
        "  }",
        "]",
        "output [",
        "  {",
        f'    name: "{OUTPUT_NAME}"',
        "    data_type: TYPE_FP32",
        f"    dims: [ {NUM_CLASSES} ]",
        f'    label_filename: "{LABELS_FILE_NAME}"',
        "  }",
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {sizes} ]",
        f"  max_queue_delay_microseconds: {max_queue_delay_us}",
        "}",
        "instance_group [",
        "  {",
        f"    count: {instances}",
        *group,
        "  }",
        "]",
    ]
    lines += [
        f'parameters: {{ key: "{key}" value: {{ string_value: "{value}" }} }}'
        for key, value in parameters.items()
    ]
    return "\n".join(lines) + "\n"


def write_repository(root: Path, labels: Path, **options: Any) -> Path:
    """Write `<root>/<model_name>/{config.pbtxt, labels.txt, 1/model.py}`; returns `root`."""
    root = Path(root)
    model_dir = root / options.get("model_name", MODEL_NAME)
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    names = [line for line in Path(labels).read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != NUM_CLASSES:
        raise ValueError(f"labels file {labels}: {len(names)} labels, the head has {NUM_CLASSES}")
    (model_dir / LABELS_FILE_NAME).write_text("\n".join(names) + "\n", encoding="utf-8")
    (model_dir / "config.pbtxt").write_text(config_pbtxt(**options), encoding="utf-8")
    (model_dir / "1" / "model.py").write_text(
        Path(__file__).read_text(encoding="utf-8"), encoding="utf-8"
    )
    # The network's definition travels beside model.py (the stub cannot import flowerdemo).
    shutil.copyfile(RESNET_SOURCE, model_dir / "1" / RESNET_FILE_NAME)
    return root


# ----- smoke checks without Triton -----------------------------------------------------------


def _torchvision_parity(network_seed: int = 0) -> str:
    """Same keys and shapes as torchvision's resnet50(num_classes=102), same outputs."""
    import torch

    try:
        import torchvision
    except ImportError:
        return "torchvision not installed: parity not checked"
    ours = build_resnet50().eval()
    theirs = torchvision.models.resnet50(num_classes=NUM_CLASSES).eval()
    a, b = ours.state_dict(), theirs.state_dict()
    if list(a) != list(b) or any(a[k].shape != b[k].shape for k in a):
        raise AssertionError("state dict differs from torchvision's resnet50")
    torch.manual_seed(network_seed)
    theirs.load_state_dict(a)
    x = torch.randn(2, *IMAGE_SHAPE)
    with torch.inference_mode():
        gap = (ours(x) - theirs(x)).abs().max().item()
    if gap > 1e-4:
        raise AssertionError(f"outputs differ from torchvision's by {gap}")
    return f"torchvision {torchvision.__version__}: same keys, shapes and outputs"


def cpu_smoke(buckets: Sequence[int] = (1, 2, 4)) -> None:
    """The network, BatchNorm folding, bucketing and the runner on the CPU (FP32)."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    reference = build_resnet50()
    randomize_batchnorm(reference, 0)
    reference.eval()
    folded = make_network(seed=0)
    x = torch.randn(3, *IMAGE_SHAPE)
    with torch.inference_mode():
        expected = torch.softmax(reference(x), dim=1).numpy()
    runner = Runner(folded, device="cpu", buckets=buckets, copy_threads=1)
    got = runner.run([x[:1].numpy(), x[1:].numpy()])
    assert got.shape == (3, NUM_CLASSES) and got.dtype == np.float32, (got.shape, got.dtype)
    gap = float(np.abs(got - expected).max())
    assert gap < 1e-4, f"folded network differs by {gap}"
    assert np.allclose(got.sum(axis=1), 1.0, atol=1e-4)
    assert bucket_for(3, (1, 2, 4, 8)) == 4 and bucket_for(1, (1, 2)) == 1
    u8_gap = _uint8_gap(folded, "cpu", buckets)
    assert u8_gap < 1e-4, f"UINT8 input differs from FP32 input by {u8_gap}"
    print(
        f"cpu smoke: ok (folded vs unfolded max gap {gap:.2e}; UINT8 input vs FP32 x/127.5-1 "
        f"{u8_gap:.2e}); {_torchvision_parity()}"
    )


def _uint8_gap(network: Any, device: str, buckets: Sequence[int]) -> float:
    """UINT8 pixels through an input_dtype="uint8" runner against the same pixels scaled
    (x / 127.5 - 1) through an FP32 runner: the largest difference of probabilities."""
    import numpy as np

    pixels = np.random.default_rng(1).integers(0, 256, (3, *IMAGE_SHAPE), dtype=np.uint8)
    scaled = (pixels.astype(np.float32) / 127.5 - 1.0).astype(np.float32)
    as_uint8 = Runner(network, device=device, buckets=buckets, copy_threads=1, input_dtype="uint8")
    as_fp32 = Runner(network, device=device, buckets=buckets, copy_threads=1)
    got = as_uint8.run([pixels[:1], pixels[1:]])
    expected = as_fp32.run([scaled[:1], scaled[1:]])
    assert got.shape == (3, NUM_CLASSES) and got.dtype == np.float32, (got.shape, got.dtype)
    return float(np.abs(got - expected).max())


def gpu_smoke(buckets: Sequence[int] = DEFAULT_BUCKETS, seconds: float = 1.0) -> dict[str, Any]:
    """Load like Triton would, check graphs against eager, time each bucket (no Triton)."""
    import numpy as np
    import torch

    started = time.perf_counter()
    runner = Runner(make_network(seed=0), device="cuda:0", buckets=buckets)
    load_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, *IMAGE_SHAPE), dtype=np.float32)
    got = runner.run([x[:2], x[2:]])
    eager = Runner.__new__(Runner)
    eager.__dict__.update(runner.__dict__)
    eager.graphs = {}
    expected = eager.run([x])
    gap = float(np.abs(got - expected).max())
    with torch.inference_mode():
        reference = torch.softmax(make_network(seed=0)(torch.from_numpy(x)), dim=1).numpy()
    fp16_gap = float(np.abs(got - reference).max())
    # The UINT8 input path (graphs of two small buckets only: a few seconds).
    uint8_gap = _uint8_gap(make_network(seed=0), "cuda:0", (1, 4))
    timings = {}
    for bucket in runner.buckets:
        batch = [rng.standard_normal((1, *IMAGE_SHAPE), dtype=np.float32)] * bucket
        runner.run(batch)
        count, begin = 0, time.perf_counter()
        while time.perf_counter() - begin < seconds / len(runner.buckets):
            runner.run(batch)
            count += 1
        per_batch = (time.perf_counter() - begin) / count
        timings[bucket] = {"ms": round(per_batch * 1000, 3), "img_per_s": round(bucket / per_batch)}
    report = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "load_s": round(load_s, 1),
        "graph_vs_eager_max_gap": gap,
        "gpu_fp16_vs_cpu_fp32_max_gap": fp16_gap,
        "uint8_vs_fp32_input_max_gap": uint8_gap,
        "parity": _torchvision_parity(),
        "per_bucket_with_host_copies": timings,
    }
    problems = []
    if not gap < 1e-4:
        problems.append(f"graph and eager results differ by {gap}")
    if not fp16_gap < 1e-3:
        problems.append(f"FP16 on the GPU and FP32 on the CPU differ by {fp16_gap}")
    if not uint8_gap < 1e-3:
        problems.append(f"UINT8 input and FP32 input (x/127.5-1) differ by {uint8_gap}")
    report["problems"] = problems
    return report


def torch_limit(
    buckets: Sequence[int], window_s: float, start_file: Path | None = None
) -> dict[str, Any]:
    """The model alone, no Triton: UINT8 input, FP16 channels_last, one CUDA graph per bucket.
    For each bucket, graph replays back to back for `window_s` ("graph": the device's limit for
    one process) and, alone, the runner with its host copies ("with copies": what the stub's
    `run` does, its torch threads at the runner's default of 4). With `start_file`, wait until that file holds a
    start time (seconds since 1970), then time bucket i in [start + i*w, start + (i+1)*w):
    several processes (MPS clients) measured in the same windows add up."""
    import numpy as np
    import torch

    started = time.perf_counter()
    runner = Runner(make_network(seed=0), device="cuda:0", buckets=buckets, input_dtype="uint8")
    report: dict[str, Any] = {
        "pid": os.getpid(),
        "device": torch.cuda.get_device_name(0),
        "mps_percentage": os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", ""),
        "load_s": round(time.perf_counter() - started, 1),
        "buckets": {},
    }
    start = time.time()
    if start_file is not None:
        print(json.dumps({"ready": os.getpid()}), flush=True)
        while not start_file.exists() or not start_file.read_text().strip():
            time.sleep(0.02)
        start = float(start_file.read_text())
    pixels = np.random.default_rng(0).integers(0, 256, (1, *IMAGE_SHAPE), dtype=np.uint8)
    for index, bucket in enumerate(runner.buckets):
        # Alone, each bucket's window starts when the last one is done (the host-copy timing
        # below takes time too); with a start file, on the shared grid.
        window_start = start + index * window_s if start_file is not None else time.time()
        window_end = window_start + window_s
        time.sleep(max(0.0, window_start - time.time()))
        graph = runner.graphs[bucket]
        count = 0
        late_s = max(0.0, time.time() - window_start)
        began = time.perf_counter()
        with torch.cuda.stream(runner.stream):
            while time.time() < window_end - 0.05:
                graph.replay()
                count += 1
                if count % 4 == 0:
                    runner.stream.synchronize()
            runner.stream.synchronize()
        elapsed = time.perf_counter() - began
        entry = {
            "graph_ms": round(elapsed / max(count, 1) * 1000, 3),
            "graph_img_per_s": round(count * bucket / elapsed, 1),
            "late_s": round(late_s, 3),
        }
        if start_file is None:
            batch = [pixels] * bucket
            runner.run(batch)
            count, began = 0, time.perf_counter()
            while time.perf_counter() - began < window_s:
                runner.run(batch)
                count += 1
            elapsed = time.perf_counter() - began
            entry["with_copies_ms"] = round(elapsed / count * 1000, 3)
            entry["with_copies_img_per_s"] = round(count * bucket / elapsed, 1)
        report["buckets"][str(bucket)] = entry
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--cpu-smoke", action="store_true", help="check the network on the CPU")
    group.add_argument("--gpu-smoke", action="store_true", help="check and time it on cuda:0")
    group.add_argument("--write-repository", type=Path, metavar="DIR")
    group.add_argument(
        "--limit", action="store_true", help="the model alone on cuda:0: img/s per bucket"
    )
    parser.add_argument("--window", type=float, default=1.0, help="--limit: seconds per bucket")
    parser.add_argument(
        "--start-file", type=Path, help="--limit: wait for a start time written to this file"
    )
    parser.add_argument("--labels", type=Path, help="labels file for --write-repository")
    parser.add_argument("--kind", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--buckets", default=",".join(str(b) for b in DEFAULT_BUCKETS))
    parser.add_argument("--seconds", type=float, default=2.0, help="--gpu-smoke: timing, in all")
    args = parser.parse_args(argv)
    buckets = tuple(int(b) for b in args.buckets.split(","))
    if args.cpu_smoke:
        cpu_smoke()
    elif args.limit:
        print(json.dumps({"limit": torch_limit(buckets, args.window, args.start_file)}), flush=True)
    elif args.gpu_smoke:
        report = gpu_smoke(buckets, args.seconds)
        print(json.dumps(report, indent=1))
        return 1 if report["problems"] else 0
    else:
        if args.labels is None:
            parser.error("--write-repository needs --labels")
        write_repository(
            args.write_repository,
            args.labels,
            kind=args.kind,
            instances=args.instances,
            buckets=buckets,
        )
        print(f"repository written: {args.write_repository}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
