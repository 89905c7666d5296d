"""CPU latency of ONNX classifiers under ONNX Runtime alone (no server, no network).

Feeds the bundled sample photos, preprocessed as the client does, one batch at a time, after a
warm-up, and prints per-batch latency percentiles and throughput for each model, batch size
and thread count. The timed runs of all subjects are interleaved in rounds.

    python benchmarks/model_cpu_latency.py [--model assets/model/flowers.onnx ...]
        [--batch 1,8] [--threads 2] [--runs 200]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from PIL import Image

from flowerdemo.core.preprocess import fit, scale_pixels
from flowerdemo.resources import bundled_model_dir, sample_images_dir


def sample_inputs(size: int) -> npt.NDArray[np.float32]:
    tensors = []
    for path in sorted(sample_images_dir().glob("*.jpg")):
        with Image.open(path) as picture:
            fitted = fit(picture.convert("RGB"), size, size, "crop")
        tensors.append(scale_pixels(np.asarray(fitted), "inception").transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(tensors), dtype=np.float32)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


class Subject:
    """One model at one batch size and thread count, with its session kept between rounds."""

    def __init__(
        self, model: Path, inputs: npt.NDArray[np.float32], batch: int, threads: int
    ) -> None:
        self.model = model
        self.batch = batch
        self.threads = threads
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.batches = [
            np.take(inputs, range(start, start + batch), axis=0, mode="wrap")
            for start in range(0, inputs.shape[0], batch)
        ]
        self.latencies_ms: list[float] = []
        self.calls = 0

    def run(self, count: int, timed: bool) -> None:
        for _ in range(count):
            batch = self.batches[self.calls % len(self.batches)]
            self.calls += 1
            started = time.perf_counter()
            self.session.run(None, {self.input_name: batch})
            if timed:
                self.latencies_ms.append((time.perf_counter() - started) * 1000.0)

    def figures(self) -> dict[str, float]:
        values = self.latencies_ms
        return {
            "mean": statistics.fmean(values),
            "p50": percentile(values, 0.50),
            "p90": percentile(values, 0.90),
            "p99": percentile(values, 0.99),
            "img_s": len(values) * self.batch / (sum(values) / 1000.0),
        }


def int_list(text: str) -> list[int]:
    try:
        values = [int(value) for value in text.split(",") if value.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: '{text}'"
        ) from error
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need positive integers, got '{text}'")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, nargs="+", default=[bundled_model_dir() / "flowers.onnx"]
    )
    parser.add_argument("--batch", type=int_list, default=[1])
    parser.add_argument("--threads", type=int_list, default=[2], help="intra-op threads")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--runs", type=int, default=200, help="timed runs per subject")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    args = parser.parse_args()
    for model in args.model:
        if not model.is_file():
            parser.error(f"--model {model}: no such file")

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"{platform.processor() or 'unknown processor'}; Python {platform.python_version()}, "
        f"onnxruntime {ort.__version__}; {args.warmup} warm-up runs, {args.runs} timed runs"
    )
    inputs = sample_inputs(224)
    subjects = [
        Subject(model, inputs, batch, threads)
        for model in args.model
        for batch in args.batch
        for threads in args.threads
    ]
    for subject in subjects:
        subject.run(args.warmup, timed=False)
    # Rounds interleave the subjects, so a burst of load from other processes on the machine
    # falls on all of them alike rather than on whichever happened to be running.
    load_before = os.getloadavg()
    for round_index in range(args.rounds):
        for subject in subjects:
            share = args.runs // args.rounds + (round_index < args.runs % args.rounds)
            subject.run(share, timed=True)
    load_after = os.getloadavg()
    print(
        f"{'model':<28} {'MB':>6} {'batch':>5} {'thr':>3} {'mean ms':>8} {'p50 ms':>8} "
        f"{'p90 ms':>8} {'p99 ms':>8} {'img/s':>8}"
    )
    for subject in subjects:
        figures = subject.figures()
        print(
            f"{subject.model.name:<28} {subject.model.stat().st_size / 1e6:6.1f} "
            f"{subject.batch:5d} {subject.threads:3d} {figures['mean']:8.2f} {figures['p50']:8.2f} "
            f"{figures['p90']:8.2f} {figures['p99']:8.2f} {figures['img_s']:8.1f}"
        )
    print(
        f"1-minute load average: {load_before[0]:.2f} before the timed runs, "
        f"{load_after[0]:.2f} after (the machine's other processes share its CPUs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
