"""Fault isolation: three Tritons behind Envoy, requests kept outstanding by the client engine
(16 of one photo, then 8 of eight photos); one Triton is SIGKILLed mid-run and started again.

What must hold: the run goes on; every request ends answered or counted failed, and with
Envoy's retries none fails; the two remaining instances keep serving; the restarted one gets
traffic from Envoy again within seconds. The counts per phase are printed (run with -s to see
them); throughput itself is measured by the benchmarks, not asserted here.
"""

from __future__ import annotations

import asyncio
import collections
import time

import pytest
import tritonclient.grpc as grpcclient

from flowerdemo.core.engine import EngineSettings, InferenceEngine
from flowerdemo.core.events import InferenceEvent
from flowerdemo.core.images import load_images
from flowerdemo.resources import sample_images_dir
from flowerdemo.serving.stack import LocalStack

pytestmark = pytest.mark.stack

# (photos per request, requests outstanding, instance killed, seconds per phase, gRPC calls).
# Batches of 8 (4.8 MB each) are retried only because Envoy may buffer a whole request body:
# with its 1 MiB default, every one in flight on the killed instance failed.
# On gRPC streams Envoy cannot retry a request once its stream has answered: the transport
# retries it once on a new stream instead.
RUNS = {
    "batch 1": (1, 16, 1, 4.0, "unary"),
    "batch 8": (8, 8, 2, 2.5, "unary"),
    "batch 1 on streams": (1, 16, 0, 3.0, "stream"),
}


def _inference_count(stack: LocalStack, index: int) -> int:
    client = grpcclient.InferenceServerClient(stack.instance_grpc_url(index))
    try:
        stats = client.get_inference_statistics("flowers", as_json=True, client_timeout=5)
        return int(stats["model_stats"][0].get("inference_count", 0))
    finally:
        client.close()


async def _counts(stack: LocalStack, indices: list[int]) -> list[int]:
    return [await asyncio.to_thread(_inference_count, stack, k) for k in indices]


@pytest.fixture(scope="module")
def three_instances(stack_settings):
    # No automatic restart: the test restarts the victim itself, to time each phase.
    with LocalStack(stack_settings(3, restart=False)) as stack:
        yield stack


@pytest.mark.parametrize("run_name", sorted(RUNS))
async def test_killing_one_instance_loses_no_request(three_instances, run_name):
    stack = three_instances
    batch_size, concurrency, victim, phase_s, calls = RUNS[run_name]
    assert all(state.state == "ready" for state in stack.states())
    photos = [image.image for image in load_images(sample_images_dir()).images[:16]]
    settings = EngineSettings(
        url=stack.grpc_url, request_timeout_s=10, batch_size=batch_size, grpc_calls=calls
    )
    engine = InferenceEngine(settings, photos)
    events: list[InferenceEvent] = []
    engine.add_sink(events.append)
    await engine.connect()
    try:
        run = asyncio.ensure_future(engine.run_automatic(concurrency))
        started = time.monotonic()
        await asyncio.sleep(phase_s)

        survivors = [k for k in range(3) if k != victim]
        before_kill = await _counts(stack, survivors)
        killed_at = time.monotonic()
        await asyncio.to_thread(stack.kill_instance, f"triton-{victim}")
        await asyncio.sleep(phase_s)
        after_kill = await _counts(stack, survivors)
        assert stack.envoy_host_health()[f"triton-{victim}"] != "healthy"

        restart_at = time.monotonic()
        await asyncio.to_thread(stack.restart_instance, f"triton-{victim}")
        assert await asyncio.to_thread(stack.wait_settled, 30)
        ready_at = time.monotonic()
        served_again_at = None
        while time.monotonic() - ready_at < 15:
            if (await _counts(stack, [victim]))[0] > 0:
                served_again_at = time.monotonic()
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(phase_s)
        engine.stop()
        await asyncio.wait_for(run, timeout=30)
        ended = time.monotonic()
    finally:
        await engine.close()

    phases = {
        "3 instances": (started, killed_at),
        "2 instances": (killed_at, restart_at),
        "restarting + 3 again": (restart_at, ended),
    }
    answered = [e for e in events if e.ok]
    failed = [e for e in events if not e.ok]
    lines = [
        f"fault isolation (CPU, 3 instances, {concurrency} outstanding, batch {batch_size}, "
        f"{calls} calls):",
        f"  requests sent {engine.sent}, answered {len(answered)}, failed {len(failed)}",
    ]
    for name, (begin, end) in phases.items():
        done = [e for e in answered if begin <= e.done_at < end]
        lines.append(
            f"  {name:<22} {len(done):>6} answered in {end - begin:4.1f} s = "
            f"{len(done) / (end - begin):7.1f}/s"
        )
    lines.append(
        f"  inferences by the survivors while {victim} was down: "
        f"{[a - b for a, b in zip(after_kill, before_kill, strict=True)]}; "
        f"restart took {ready_at - restart_at:.1f} s; Envoy sent it traffic "
        + (
            f"{served_again_at - ready_at:.2f} s after it was ready"
            if served_again_at is not None
            else "never (15 s)"
        )
    )
    print("\n" + "\n".join(lines))

    assert len(events) == engine.sent, "every request ends as exactly one event"
    kinds = collections.Counter(str(e.error.kind.value) for e in failed if e.error is not None)
    assert not failed, f"failed requests by kind: {dict(kinds)}; first: {failed[0].error}"
    for name, (begin, end) in phases.items():
        assert any(begin <= e.done_at < end for e in answered), f"nothing answered: {name}"
    assert all(a > b for a, b in zip(after_kill, before_kill, strict=True)), (
        "both remaining instances kept serving"
    )
    assert served_again_at is not None, "Envoy never sent traffic to the restarted instance"
