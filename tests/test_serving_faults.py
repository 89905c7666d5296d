"""Fault isolation: three Tritons behind Envoy, 16 requests kept outstanding by the client
engine; one Triton is SIGKILLed mid-run and later started again.

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

CONCURRENCY = 16
PHASE_S = 4.0
VICTIM = 1


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
    with LocalStack(stack_settings(3)) as stack:
        yield stack


async def test_killing_one_instance_loses_no_request(three_instances):
    stack = three_instances
    photos = [image.rgb for image in load_images(sample_images_dir()).images[:16]]
    engine = InferenceEngine(EngineSettings(url=stack.grpc_url, request_timeout_s=10), photos)
    events: list[InferenceEvent] = []
    engine.add_sink(events.append)
    await engine.connect()
    try:
        run = asyncio.ensure_future(engine.run_automatic(CONCURRENCY))
        started = time.monotonic()
        await asyncio.sleep(PHASE_S)

        survivors = [k for k in range(3) if k != VICTIM]
        before_kill = await _counts(stack, survivors)
        killed_at = time.monotonic()
        await asyncio.to_thread(stack.stop_instance, VICTIM, kill=True)
        await asyncio.sleep(PHASE_S)
        after_kill = await _counts(stack, survivors)
        assert stack.envoy_host_health()[f"triton-{VICTIM}"] != "healthy"

        restart_at = time.monotonic()
        await asyncio.to_thread(stack.start_instance, VICTIM)
        ready_at = time.monotonic()
        served_again_at = None
        while time.monotonic() - ready_at < 15:
            if (await _counts(stack, [VICTIM]))[0] > 0:
                served_again_at = time.monotonic()
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(PHASE_S)
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
        f"fault isolation (CPU, {CONCURRENCY} outstanding, {len(photos)} photos, batch 1):",
        f"  requests sent {engine.sent}, answered {len(answered)}, failed {len(failed)}",
    ]
    for name, (begin, end) in phases.items():
        done = [e for e in answered if begin <= e.done_at < end]
        lines.append(
            f"  {name:<22} {len(done):>6} answered in {end - begin:4.1f} s = "
            f"{len(done) / (end - begin):7.1f}/s"
        )
    lines.append(
        f"  survivors served while {VICTIM} was down: "
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
