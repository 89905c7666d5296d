"""Top-1/top-5 of an exported ONNX classifier on splits of the Flowers-102 pack, on the CPU.

    python -m flowerdemo.training.evaluate --model assets/model/flowers.onnx --pack PACK_DIR \
        --splits val,test [--report results.json]

Each image goes through the client's own preprocessing (resize so the shorter side is 224,
centre crop, x / 127.5 - 1) and then ONNX Runtime, so the figures are those the app gets.
Needs only numpy, Pillow and onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from flowerdemo.training.data import SPLITS, client_input, read_split, topk_accuracy


def evaluate_split(
    session: ort.InferenceSession, pack: Path, split: str, batch_size: int
) -> dict[str, Any]:
    data = read_split(pack, split)
    input_name = session.get_inputs()[0].name
    scores = []
    started = time.perf_counter()
    for start in range(0, len(data), batch_size):
        batch = np.stack([client_input(image) for image in data.images[start : start + batch_size]])
        scores.append(session.run(None, {input_name: batch})[0])
    probabilities = np.concatenate(scores)
    seconds = time.perf_counter() - started
    return {
        "images": len(data),
        "top1": topk_accuracy(probabilities, data.labels, 1),
        "top5": topk_accuracy(probabilities, data.labels, 5),
        "seconds": seconds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowerdemo.training.evaluate")
    parser.add_argument("--model", type=Path, required=True, help="ONNX file")
    parser.add_argument("--pack", type=Path, required=True, help="folder of the pack's shards")
    parser.add_argument("--splits", default="test", help=f"comma-separated, from {SPLITS}")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    parser.add_argument("--report", type=Path, help="JSON file for the results")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        raise SystemExit(f"{args.model}: no such ONNX file")
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(args.model), options, providers=["CPUExecutionProvider"])
    results: dict[str, Any] = {"model": args.model.name, "onnxruntime": ort.__version__}
    for split in [name.strip() for name in args.splits.split(",") if name.strip()]:
        metrics = evaluate_split(session, args.pack, split, args.batch_size)
        results[split] = metrics
        print(
            f"{args.model.name} on {split} ({metrics['images']} images): "
            f"top-1 {metrics['top1']:.4f}, top-5 {metrics['top5']:.4f} "
            f"({metrics['seconds']:.0f} s)",
            flush=True,
        )
    if args.report is not None:
        args.report.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
