"""Export a trained classifier to ONNX (FP32 and FP16) and check it against PyTorch.

    python -m flowerdemo.training.export --arch lite0 --weights OUT_DIR/lite0.pt \
        --onnx assets/model/flowers.onnx --fp16-onnx models/flowers_fp16.onnx
    python -m flowerdemo.training.export --arch resnet50 --weights OUT_DIR/resnet50.pt \
        --onnx models/resnet50_flowers.onnx --fp16-onnx models/resnet50_flowers_fp16.onnx

Both files take `input` float32 [N, 3, 224, 224] (N dynamic) and give `probabilities` float32
[N, 102] (softmax). The FP16 variant computes in half precision between a cast at the input and
one at the output, so clients send the same FP32 tensor to either. Each file is run by ONNX
Runtime on the bundled sample photos (client preprocessing, batches of 1 and of 8) and compared
with PyTorch in FP32; the export fails if the largest difference in probabilities exceeds the
tolerance (FP32: --atol, FP16: --fp16-atol) or a top-1 class differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import torch
from PIL import Image

from flowerdemo.training.data import NUM_CLASSES, client_input
from flowerdemo.training.models import ARCHITECTURES, WithSoftmax, build_model, load_state

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
SIZE = 224


def sample_batch(samples_dir: Path) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The bundled sample photos (NNN-name.jpg, NNN = class) with the client's preprocessing."""
    paths = sorted(samples_dir.glob("[0-9][0-9][0-9]-*.jpg"))
    if not paths:
        raise SystemExit(f"{samples_dir}: no NNN-name.jpg sample photos to check the export with")
    pictures = []
    for path in paths:
        with Image.open(path) as picture:
            pictures.append(client_input(np.asarray(picture.convert("RGB"), dtype=np.uint8)))
    labels = np.array([int(path.name[:3]) for path in paths], dtype=np.int64)
    return np.stack(pictures), labels


def export(model: torch.nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 3, SIZE, SIZE)
    with warnings.catch_warnings():
        # The TorchScript-based exporter is chosen on purpose (no onnxscript needed, one
        # self-contained file); its deprecation notice and constant-folding remarks are noise.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def run_onnx(path: Path, batch: npt.NDArray[np.float32], chunk: int) -> npt.NDArray[np.float32]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = [
        session.run([OUTPUT_NAME], {INPUT_NAME: batch[start : start + chunk]})[0]
        for start in range(0, batch.shape[0], chunk)
    ]
    result: npt.NDArray[np.float32] = np.concatenate(outputs).astype(np.float32)
    return result


def compare(
    name: str,
    path: Path,
    reference: npt.NDArray[np.float32],
    batch: npt.NDArray[np.float32],
    atol: float,
) -> dict[str, Any]:
    """ONNX Runtime against the PyTorch FP32 reference, in batches of 1 and of 8."""
    report: dict[str, Any] = {"file": path.name, "bytes": path.stat().st_size, "atol": atol}
    for chunk in (1, 8):
        got = run_onnx(path, batch, chunk)
        if got.shape != reference.shape:
            raise SystemExit(f"{path}: output shape {got.shape}, expected {reference.shape}")
        difference = float(np.max(np.abs(got - reference)))
        agreement = float(np.mean(got.argmax(1) == reference.argmax(1)))
        row_sums = float(np.max(np.abs(got.sum(axis=1) - 1.0)))
        report[f"batch{chunk}"] = {
            "max_abs_diff": difference,
            "top1_agreement": agreement,
            "max_row_sum_error": row_sums,
        }
        print(
            f"{name}: batch {chunk}: max |ORT - PyTorch| = {difference:.2e} (tolerance {atol:g}), "
            f"top-1 agreement {agreement:.3f}, max |row sum - 1| = {row_sums:.1e}"
        )
        if difference > atol or agreement < 1.0:
            raise SystemExit(f"{path}: ONNX Runtime output differs from PyTorch beyond tolerance")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowerdemo.training.export")
    parser.add_argument("--arch", choices=ARCHITECTURES, required=True)
    parser.add_argument("--weights", type=Path, required=True, help="state dict from train.py")
    parser.add_argument("--onnx", type=Path, required=True, help="FP32 ONNX file to write")
    parser.add_argument("--fp16-onnx", type=Path, help="FP16 ONNX file to write")
    parser.add_argument("--samples", type=Path, default=Path("assets/samples"))
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--fp16-atol", type=float, default=2e-2)
    parser.add_argument("--report", type=Path, help="JSON file for the comparison figures")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = build_model(args.arch)
    model.load_state_dict(load_state(args.weights))
    model.eval()
    batch, labels = sample_batch(args.samples)
    with torch.no_grad():
        reference = WithSoftmax(model)(torch.from_numpy(batch)).numpy()
    if reference.shape != (batch.shape[0], NUM_CLASSES):
        raise SystemExit(f"{args.weights}: model gives {reference.shape}, not N x {NUM_CLASSES}")
    report: dict[str, Any] = {
        "arch": args.arch,
        "weights": args.weights.name,
        "samples": int(batch.shape[0]),
        "pytorch_sample_top1": float(np.mean(reference.argmax(1) == labels)),
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }

    export(WithSoftmax(model), args.onnx)
    report["fp32"] = compare("fp32", args.onnx, reference, batch, args.atol)
    if args.fp16_onnx is not None:
        half = build_model(args.arch)
        half.load_state_dict(load_state(args.weights))
        half.eval().half()
        export(WithSoftmax(half, compute_dtype=torch.float16), args.fp16_onnx)
        report["fp16"] = compare("fp16", args.fp16_onnx, reference, batch, args.fp16_atol)
    if args.report is not None:
        args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
