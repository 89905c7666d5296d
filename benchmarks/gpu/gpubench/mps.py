"""The CUDA MPS control daemon: several Tritons share one GPU, each at a share of the SMs.
That is the stand-in for MIG slices on a machine without MIG: NOT MIG, and every chart says so."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpubench.machine import log, run_text

HERE = Path(__file__).resolve().parent.parent


class Mps:
    """The MPS control daemon for the MPS configurations (started with our own pipe folder)."""

    def __init__(self, base: Path) -> None:
        self.pipe = base / "pipe"
        self.logs = base / "log"
        self.control = shutil.which("nvidia-cuda-mps-control") or next(
            (
                str(p)
                for p in (
                    Path("/usr/bin/nvidia-cuda-mps-control"),
                    Path("/usr/local/nvidia/bin/nvidia-cuda-mps-control"),
                    Path("/usr/local/cuda/bin/nvidia-cuda-mps-control"),
                )
                if p.exists()
            ),
            None,
        )
        self.running = False

    @property
    def env(self) -> dict[str, str]:
        return {"CUDA_MPS_PIPE_DIRECTORY": str(self.pipe), "CUDA_MPS_LOG_DIRECTORY": str(self.logs)}

    def start(self) -> None:
        if self.control is None:
            raise RuntimeError("nvidia-cuda-mps-control not found: MPS configurations cannot run")
        self.pipe.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        result = subprocess.run(
            [self.control, "-d"], env=env, capture_output=True, text=True, timeout=30
        )
        if result.returncode != 0:
            raise RuntimeError(f"MPS daemon did not start: {result.stdout}{result.stderr}")
        self.running = True
        log(f"MPS control daemon started (pipe {self.pipe})")

    def query(self, command: str) -> str:
        if not self.running or self.control is None:
            return ""
        return run_text(
            [self.control], timeout=15, input=command + "\n", env={**os.environ, **self.env}
        )

    def stop(self) -> None:
        if not self.running or self.control is None:
            return
        self.query("quit")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (self.pipe / "control").exists():
            time.sleep(0.2)
        self.running = False
        log("MPS control daemon stopped")

    def __enter__(self) -> Mps:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def mps_check(percentage: int) -> int:
    """MPS works here: the model timed as one MPS client at `percentage`% (no Triton)."""
    mps = Mps(Path(tempfile.gettempdir()) / "flowerdemo-mps-check")
    try:
        mps.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        print(f"mps check: {error}")
        return 1
    try:
        env = {**os.environ, **mps.env, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(percentage)}
        command = [sys.executable, str(HERE / "resnet50_model.py"), "--gpu-smoke"]
        command += ["--buckets", "1,8,32,128", "--seconds", "2"]
        print(f"mps check: {' '.join(command)} with CUDA_MPS_ACTIVE_THREAD_PERCENTAGE={percentage}")
        print(run_text(command, timeout=150, env=env))
        print("get_server_list:", mps.query("get_server_list") or "(none)")
        print(
            run_text(
                ["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv"]
            )
        )
    finally:
        mps.stop()
    return 0


# ----- one configuration ---------------------------------------------------------------------
