"""The local stack for real: tritonserver processes and Envoy on 127.0.0.1, free ports.

The shared session stack answers classification requests through Envoy (gRPC and HTTP) and
directly; a stack of our own is crashed, restarted and stopped to see that nothing is left
behind; bad configurations fail with a message that names the instance and the cause, and stop
whatever had been started.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from flowerdemo.core.events import INSTANCE_HEADER
from flowerdemo.serving.stack import (
    LocalStack,
    StackError,
    port_in_use,
    summarize_triton_log,
    wait_until,
)

pytestmark = pytest.mark.stack
SHM = Path("/dev/shm")


def _batch(n: int = 1) -> np.ndarray:
    return np.random.default_rng(n).random((n, 3, 224, 224), dtype=np.float32)


def _grpc_top3(url: str, model: str = "flowers") -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    try:
        tensor = grpcclient.InferInput("input", [2, 3, 224, 224], "FP32")
        tensor.set_data_from_numpy(_batch(2))
        output = grpcclient.InferRequestedOutput("probabilities", class_count=3)
        result = client.infer(model, [tensor], outputs=[output], client_timeout=10)
        return result.as_numpy("probabilities")
    finally:
        client.close()


def _inference_count(stack: LocalStack, index: int) -> int:
    client = grpcclient.InferenceServerClient(stack.instance_grpc_url(index))
    try:
        stats = client.get_inference_statistics("flowers", as_json=True, client_timeout=5)
        return int(stats["model_stats"][0].get("inference_count", 0))
    finally:
        client.close()


def _labels(stack: LocalStack) -> list[str]:
    model = stack.settings.model
    assert model is not None
    return (Path(model) / "labels.txt").read_text().splitlines()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`, read from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces, so split after the last ')'.
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _group_gone(pgid: int | None) -> bool:
    assert pgid is not None
    return wait_until(lambda: not _group_members(pgid), timeout=5)


def test_every_instance_is_ready_with_its_ports(local_stack):
    states = local_stack.states()
    assert [s.name for s in states] == ["triton-0", "triton-1"]
    base = local_stack.settings.base_port
    for k, state in enumerate(states):
        assert state.state == "ready", state
        assert state.pid is not None and _alive(state.pid)
        assert state.ports == (base + 10 * k, base + 10 * k + 1, base + 10 * k + 2)
        assert state.device == "cpu"
    assert local_stack.envoy_host_health() == {"triton-0": "healthy", "triton-1": "healthy"}


def test_classification_through_envoy_names_the_labels(local_stack):
    labels = _labels(local_stack)
    rows = _grpc_top3(local_stack.grpc_url)
    assert rows.shape == (2, 3)
    for row in rows:
        scores = []
        for entry in row:
            score, index, label = entry.decode().split(":", 2)
            assert label == labels[int(index)]
            scores.append(float(score))
        assert scores == sorted(scores, reverse=True)
        assert 0 < sum(scores) <= 1.0 + 1e-5


def test_http_through_envoy_and_each_instance_directly(local_stack):
    client = httpclient.InferenceServerClient(local_stack.http_url)
    try:
        tensor = httpclient.InferInput("input", [1, 3, 224, 224], "FP32")
        tensor.set_data_from_numpy(_batch(1))
        result = client.infer("flowers", [tensor])
        probabilities = result.as_numpy("probabilities")
        assert probabilities.shape == (1, 102)
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)
    finally:
        client.close()
    for k in range(local_stack.instance_count):
        assert _grpc_top3(local_stack.instance_grpc_url(k)).shape == (2, 3)


def test_envoy_spreads_requests_over_both_instances(local_stack):
    before = [_inference_count(local_stack, k) for k in range(2)]
    for _ in range(10):
        _grpc_top3(local_stack.grpc_url)
    served: list[int] = []

    def counted() -> bool:
        # Triton updates its statistics just after it answers: give the last one a moment.
        after = [_inference_count(local_stack, k) for k in range(2)]
        served[:] = [a - b for a, b in zip(after, before, strict=True)]
        return sum(served) >= 20

    wait_until(counted, timeout=5, interval=0.1)
    # Round robin with one Envoy worker: ten 2-image requests, five to each instance.
    assert served == [10, 10]


async def _grpc_answer_instances(url: str, count: int) -> list[str]:
    """`count` ModelInfer calls made directly with grpc.aio (tritonclient drops response
    headers): the INSTANCE_HEADER of each answer's initial metadata."""
    request = service_pb2.ModelInferRequest(model_name="flowers")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 3, 224, 224])
    request.outputs.add(name="probabilities")
    request.raw_input_contents.append(_batch(1).tobytes())
    names = []
    async with grpc.aio.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(count):
            call = stub.ModelInfer(request, timeout=10)
            response = await call
            assert response.outputs[0].shape == [1, 102]
            metadata = dict(await call.initial_metadata())
            names.append(metadata.get(INSTANCE_HEADER, "missing"))
    return names


async def test_every_grpc_answer_names_the_instance_that_served_it(local_stack):
    names = await _grpc_answer_instances(local_stack.grpc_url, 6)
    # Round robin over the two instances: three answers each, each named by Envoy.
    assert sorted(names) == ["triton-0"] * 3 + ["triton-1"] * 3


def test_every_http_answer_names_the_instance_that_served_it(local_stack):
    names = []
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 3, 224, 224],
                    "datatype": "FP32",
                    "data": _batch(1).ravel().tolist(),
                }
            ]
        }
    ).encode()
    for _ in range(4):
        request = urllib.request.Request(
            f"http://{local_stack.http_url}/v2/models/flowers/infer",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert len(json.loads(response.read())["outputs"][0]["data"]) == 102
            names.append(response.headers.get(INSTANCE_HEADER))
    # Metadata calls are answers too.
    url = f"http://{local_stack.http_url}/v2/health/ready"
    with urllib.request.urlopen(url, timeout=10) as response:
        names.append(response.headers.get(INSTANCE_HEADER))
    assert sorted(names[:4]) == ["triton-0", "triton-0", "triton-1", "triton-1"]
    assert names[4] in ("triton-0", "triton-1")


def test_a_crash_is_reported_restarted_and_cleaned_up(stack_settings):
    stack = LocalStack(stack_settings(2, with_envoy=False, restart=False))
    with stack:
        workdir = stack.workdir
        assert workdir is not None and workdir.is_dir()
        prefixes = [stack.instance_shm_prefix(k) for k in range(2)]
        assert all(list(SHM.glob(f"{p}*")) for p in prefixes), "each instance maps its region"

        # A crash from outside: SIGKILL to tritonserver alone, its stubs left running.
        crashed = stack.states()[1].pid
        assert crashed is not None
        os.kill(crashed, signal.SIGKILL)
        assert wait_until(lambda: stack.states()[1].state == "down", timeout=2)
        state = stack.states()[1]
        assert "exited unexpectedly" in state.message and state.pid is None
        assert _group_gone(crashed), "the crashed instance's stubs were ended"
        assert not list(SHM.glob(f"{prefixes[1]}*"))
        assert stack.states()[0].state == "ready"

        stack.start_instance(1)
        restarted = stack.states()[1]
        assert restarted.state == "ready" and restarted.pid not in (None, crashed)
        assert _grpc_top3(stack.instance_grpc_url(1)).shape == (2, 3)

        # A kill on request, as the fault test does.
        stack.stop_instance(1, kill=True)
        assert stack.states()[1].state == "stopped"
        assert stack.states()[1].message == "killed (SIGKILL)"
        assert _group_gone(restarted.pid)
        assert not list(SHM.glob(f"{prefixes[1]}*"))
        pids = [s.pid for s in stack.states() if s.pid is not None]
    assert [s.state for s in stack.states()] == ["stopped", "stopped"]
    assert all(_group_gone(pid) for pid in pids)
    assert not workdir.exists()
    assert not any(list(SHM.glob(f"{p}*")) for p in prefixes)
    for port in stack.states()[0].ports:
        assert not port_in_use("127.0.0.1", port)
    stack.stop()  # idempotent


def test_port_in_use_names_the_instance_and_starts_nothing(stack_settings):
    settings = stack_settings(3)
    busy_port = settings.base_port + 10 + 1  # triton-1's gRPC port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", busy_port))
        squatter.listen()
        stack = LocalStack(settings)
        with pytest.raises(StackError) as caught:
            stack.start()
    assert str(caught.value) == f"triton-1: gRPC port {busy_port} on 127.0.0.1 is already in use"
    assert [s.state for s in stack.states()] == ["stopped", "failed", "stopped"]
    assert stack.workdir is not None and not stack.workdir.exists()


def test_envoy_port_in_use(stack_settings):
    settings = stack_settings(1)
    port = int(settings.admin_listen.rsplit(":", 1)[1])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(
            StackError, match=re.escape(f"envoy: admin port {port} on 127.0.0.1 is already")
        ):
            LocalStack(settings).start()


def test_missing_model_file(stack_settings, tmp_path):
    missing = tmp_path / "absent.onnx"
    with pytest.raises(StackError, match=re.escape(f"model: model file {missing} not found")):
        LocalStack(stack_settings(2, model=missing)).start()


def test_labels_count_not_matching_the_output(stack_settings, served_model_dir, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("rose\ntulip\n")
    stack = LocalStack(stack_settings(2, model=served_model_dir / "flowers.onnx", labels=labels))
    with pytest.raises(StackError) as caught:
        stack.start()
    message = str(caught.value)
    assert message.startswith("model: labels file ")
    assert f"{labels} has 2 labels" in message and "has 102 classes" in message


def test_a_model_that_fails_to_load_stops_the_started_instances(stack_settings):
    # No machine has a GPU at index 99, so triton-1's KIND_GPU model cannot load, while
    # triton-0 (CPU) starts normally and must be stopped again.
    settings = stack_settings(2, devices=("cpu", "cuda:99"))
    stack = LocalStack(settings)
    with pytest.raises(StackError) as caught:
        stack.start()
    message = str(caught.value)
    assert message.startswith("triton-1: exited with code 1 while starting: ")
    assert "flowers" in message
    states = stack.states()
    assert (states[0].state, states[1].state) == ("stopped", "failed")
    assert states[1].message in message
    for port in states[0].ports:
        assert not port_in_use("127.0.0.1", port)
    assert stack.workdir is not None and not stack.workdir.exists()


def _children(parent: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return children


def test_niceness_lowers_the_priority_of_triton_its_model_processes_and_envoy(stack_settings):
    base = os.getpriority(os.PRIO_PROCESS, 0)
    with LocalStack(stack_settings(1, niceness=7)) as stack:
        envoy = stack.envoy_pid()
        assert envoy is not None and os.getpriority(os.PRIO_PROCESS, envoy) == min(base + 7, 19)
        (state,) = stack.states()
        assert state.pid is not None
        assert os.getpriority(os.PRIO_PROCESS, state.pid) == min(base + 7, 19)
        stubs = [
            int(pid)
            for pid in subprocess.run(
                ["pgrep", "-P", str(state.pid)], capture_output=True, text=True
            ).stdout.split()
        ]
        assert stubs, "the Python-backend model process was not found"
        assert all(os.getpriority(os.PRIO_PROCESS, pid) == min(base + 7, 19) for pid in stubs)


def test_an_instance_offers_only_the_wires_asked_for(stack_settings):
    """The window's and the headless client's local stack start only what --wire can pick:
    with the default fp32, no Python-backend variant process runs beside the model."""
    import tritonclient.grpc as grpcclient

    from flowerdemo.options import RunOptions

    wires = RunOptions(url=None).local_wires()
    assert wires == ("fp32",)
    with LocalStack(stack_settings(1, with_envoy=False, wires=wires)) as stack:
        client = grpcclient.InferenceServerClient(stack.instance_grpc_url(0))
        try:
            index = client.get_model_repository_index(as_json=True)
        finally:
            client.close()
        (state,) = stack.states()
        stubs = subprocess.run(
            ["pgrep", "-P", str(state.pid)], capture_output=True, text=True
        ).stdout.split()
    assert sorted(m["name"] for m in index.get("models", [])) == ["flowers"]
    assert len(stubs) == 1, f"one model process, not {len(stubs)}"
    assert RunOptions(url=None, wire="uint8").local_wires() == ("fp32", "uint8")
    assert RunOptions(url=None, wire="auto").local_wires() == ("fp32", "uint8", "jpeg")


def test_bad_settings_are_refused_before_anything_starts(stack_settings):
    with pytest.raises(StackError, match="instances: need at least 1, got 0"):
        LocalStack(replace(stack_settings(1), instances=0))
    with pytest.raises(StackError, match="device 'tpu:0'"):
        LocalStack(stack_settings(1, devices=("tpu:0",)))
    with pytest.raises(StackError, match=re.escape("listen: '127.0.0.1' is not HOST:PORT")):
        LocalStack(stack_settings(1, listen="127.0.0.1"))
    with pytest.raises(StackError, match="base port 65530: instance ports would run to 65552"):
        LocalStack(stack_settings(3, base_port=65530))


OWNER_SCRIPT = """
import json, sys, time
from pathlib import Path
from flowerdemo.serving.stack import LocalStack, StackSettings
values = json.loads(sys.argv[1])
values["model"] = Path(values["model"])
stack = LocalStack(StackSettings(**values))
stack.start()
print(json.dumps({
    "groups": [s.pid for s in stack.states()] + [stack.envoy_pid()],
    "workdir": str(stack.workdir),
    "prefix": stack.instance_shm_prefix(0),
}), flush=True)
time.sleep(600)
"""


def test_children_are_cleaned_up_when_the_owner_is_killed(stack_settings):
    settings = stack_settings(1)
    values = {
        "instances": 1,
        "base_port": settings.base_port,
        "listen": settings.listen,
        "http_listen": settings.http_listen,
        "admin_listen": settings.admin_listen,
        "model": str(settings.model),
    }
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER_SCRIPT, json.dumps(values)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        started = json.loads(owner.stdout.readline())
    finally:
        # No stop(), no atexit: as when a test run is killed.
        owner.kill()
        owner.wait()
    assert all(_group_gone(pgid) for pgid in started["groups"])
    assert wait_until(lambda: not Path(started["workdir"]).exists(), timeout=5)
    assert not list(SHM.glob(f"{started['prefix']}*"))


def test_the_cause_is_read_from_a_real_triton_log():
    # Lines as tritonserver 2.51 wrote them when its gRPC port was taken between our check and
    # its bind: the CPU-only noise is skipped and the failure itself is reported.
    log = "\n".join(
        [
            'W1125 11:33:59.860125 9073 pinned_memory_manager.cc:273] "Unable to allocate pinned'
            " system memory, pinned memory pool will not be available: CUDA driver version is"
            ' insufficient for CUDA runtime version"',
            'E1125 11:33:59.860299 9073 server.cc:241] "CudaDriverHelper has not been'
            ' initialized."',
            "E1125 11:34:01.219941825    9073 chttp2_server.cc:1060]                UNKNOWN:No"
            " address added out of total 1 resolved for '127.0.0.1:18011' {created_time:...}",
            'E1125 11:34:01.223432 9073 main.cc:245] "failed to start GRPC service: Unavailable'
            " - Socket '127.0.0.1:18011' already in use \"",
        ]
    )
    assert summarize_triton_log(log) == (
        "failed to start GRPC service: Unavailable - Socket '127.0.0.1:18011' already in use"
    )
    assert summarize_triton_log("I1125 all fine\n") == ""
