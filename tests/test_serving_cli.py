"""`flowerdemo serve`: --print-config files (checked by the real envoy), and the foreground stack
run as its own process, controlled through standard input and stopped with SIGTERM."""

from __future__ import annotations

import argparse
import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from flowerdemo.serving.cli import add_serve_arguments, run_serve
from flowerdemo.serving.envoy import validate_command
from flowerdemo.serving.stack import port_in_use


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(list(argv))


def _serve(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_serve(_args(*argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_print_config_local_for_mig(served_model_dir, tmp_path):
    dest = tmp_path / "config"
    code, out, err = _serve(
        "--print-config", str(dest), "-n", "3", "--device", "mig", "--model", str(served_model_dir)
    )
    assert code == 0, err
    listed = [Path(line) for line in out.splitlines()]
    assert all(path.exists() for path in listed)
    assert {p.name for p in listed} >= {"envoy.yaml", "run-local.sh", "run-containers.sh"}

    result = subprocess.run(
        validate_command(dest / "envoy.yaml"), capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr

    containers = (dest / "run-containers.sh").read_text()
    for k in range(3):
        assert f"--gpus '\"device=0:{k}\"'" in containers
        assert f"--grpc-port={8001 + 10 * k}" in containers
    assert "nvcr.io/nvidia/tritonserver:" in containers
    assert "trtexec --onnx=/models/flowers/model.onnx --fp16" in containers

    onnx_config = (dest / "repository-onnx" / "flowers" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in onnx_config and "kind: KIND_GPU" in onnx_config
    trt_config = (dest / "repository-tensorrt" / "flowers" / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in trt_config
    local = (dest / "run-local.sh").read_text()
    assert local.count("--backend-config=python,shm-region-prefix-name=") == 3
    assert (dest / "backends" / "python" / "libtriton_python.so").is_file()


def test_print_config_compose_and_k8s_use_the_deployment_writer(served_model_dir, tmp_path):
    for target in ("compose", "k8s"):
        dest = tmp_path / target
        code, out, err = _serve(
            "--print-config", str(dest), "--target", target, "-n", "2",
            "--model", str(served_model_dir),
        )  # fmt: skip
        assert code == 0, err
        listed = [Path(line) for line in out.splitlines()]
        assert all(path.exists() for path in listed)
        written = "".join(p.read_text() for p in listed if p.is_file() and p.suffix == ".yaml")
        # The deployment writer got the plan: the model it serves appears in its files.
        assert "flowers" in written
        if target == "compose":
            assert "triton-0" in written and "triton-1" in written


def test_bad_arguments_give_clear_messages(tmp_path):
    code, _, err = _serve("--instances", "0")
    assert code == 2 and "--instances must be 1 or more, got 0" in err
    missing = tmp_path / "nope.onnx"
    code, _, err = _serve("--print-config", str(tmp_path / "c"), "--model", str(missing))
    assert code == 1 and f"model: model file {missing} not found" in err
    code, _, err = _serve("--print-config", str(tmp_path / "c"), "--device", "tpu")
    assert code == 1 and "device 'tpu'" in err


class _Lines:
    """Lines of a child's standard output, read on a thread so waits can time out."""

    def __init__(self, stream) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(
            f"no line matching {pattern!r}; output so far:\n" + "\n".join(self.seen)
        )


@pytest.mark.stack
def test_foreground_stack_obeys_commands_and_stops_on_sigterm(stack_settings, served_model_dir):
    settings = stack_settings(2)
    command = [
        sys.executable, "-m", "flowerdemo.serving.cli",
        "--instances", "2", "--model", str(served_model_dir),
        "--base-port", str(settings.base_port), "--listen", settings.listen,
        "--http-listen", settings.http_listen, "--admin-listen", settings.admin_listen,
    ]  # fmt: skip
    child = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    try:
        output = _Lines(child.stdout)
        pids = [int(output.wait_for(rf"^triton-{k}\s+ready\s+(\d+)").group(1)) for k in range(2)]
        workdir = Path(output.wait_for(r"^Work folder: (\S+)").group(1))
        url = output.wait_for(r"^Client:\s+flowerdemo --url (\S+)$").group(1)
        assert url == settings.listen

        client = grpcclient.InferenceServerClient(url)
        tensor = grpcclient.InferInput("input", [1, 3, 224, 224], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 3, 224, 224), np.float32))
        assert client.infer("flowers", [tensor], client_timeout=10).as_numpy(
            "probabilities"
        ).shape == (1, 102)
        client.close()

        assert child.stdin is not None

        def send(line: str) -> None:
            child.stdin.write(line + "\n")
            child.stdin.flush()

        # A kill is reported and the supervisor restarts the instance on its own.
        send("kill 1")
        output.wait_for(r"^triton-1\s+killed\s+SIGKILL")
        output.wait_for(r"^triton-1\s+down\s+exited unexpectedly")
        output.wait_for(r"^triton-1\s+ready\s+")
        send("status")
        restarted = int(output.wait_for(r"^triton-1\s+ready\s+(\d+)\s.*\s1\s+ready in").group(1))
        assert restarted != pids[1]
        output.wait_for(r"^Envoy \(ready\) sees: triton-0 healthy .*triton-1 healthy")

        # Added, then removed (drained first); Envoy is never restarted.
        send("add")
        output.wait_for(r"^stack\s+adding\s+triton-2")
        output.wait_for(r"^triton-2\s+ready\s+")
        send("remove")
        output.wait_for(r"^stack\s+removing\s+triton-2")
        output.wait_for(r"^triton-2\s+draining")
        output.wait_for(r"^triton-2\s+stopped\s+removed")
        send("frobnicate")
        output.wait_for(r"^unknown command 'frobnicate': add \| remove")
        send("remove triton-7")
        output.wait_for(r"^remove triton-7: no instance named 'triton-7'")

        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == 0
        output.wait_for(r"^Stopping the stack")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    for pid in (pids[0], restarted):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not workdir.exists()
    for port in (settings.base_port + 1, settings.base_port + 11):
        assert not port_in_use("127.0.0.1", port)
    assert not port_in_use("127.0.0.1", int(settings.listen.rsplit(":", 1)[1]))


def test_autoscale_limits_default_to_what_the_machine_holds():
    from flowerdemo.serving.cli import autoscale_limits

    cores = os.cpu_count() or 1
    assert autoscale_limits("1:3", ("cpu",)) == (1, 3)
    assert autoscale_limits("1:", ("cpu",)) == (1, max(cores, 1))
    assert autoscale_limits("2", ("cuda:0", "cuda:1", "cuda:2")) == (2, 3)
    for bad in ("0:2", "3:1", "x", "1:2:3"):
        with pytest.raises(ValueError, match="--autoscale"):
            autoscale_limits(bad, ("cpu",))
    code, _, err = _serve("--autoscale", "1:2", "--no-envoy")
    assert code == 2 and "drop --no-envoy" in err
