"""Scaling the real stack live, under load, with nothing lost.

One stack (Tritons behind Envoy, endpoints from files Envoy watches) serves the client engine in
automatic mode with requests kept outstanding while instances are added, removed (drained
first), killed (SIGKILL) and restarted. Every request sent must end answered, none failed; Envoy
is never restarted (its pid stays). Each phase lasts a couple of seconds: throughput is measured
by benchmarks/instances.py, not here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable

import pytest

from flowerdemo.core.autoscale import AutoscalePolicy
from flowerdemo.core.engine import EngineSettings, InferenceEngine
from flowerdemo.core.events import InferenceEvent
from flowerdemo.core.images import load_images
from flowerdemo.resources import sample_images_dir
from flowerdemo.serving.admin import read_upstream_hosts
from flowerdemo.serving.cli import _Autoscaler
from flowerdemo.serving.stack import LocalStack, StackEvent, wait_until

pytestmark = pytest.mark.stack
PHASE_S = 1.5


@pytest.fixture(scope="module")
def scaling_stack(stack_settings, free_port_block):
    # Ports for up to four instances, so those added later find theirs free.
    with LocalStack(stack_settings(1, base_port=free_port_block(33))) as stack:
        yield stack


class _Load:
    """The engine in automatic mode with `concurrency` outstanding, its events collected."""

    def __init__(self, url: str, concurrency: int = 8) -> None:
        photos = [image.image for image in load_images(sample_images_dir()).images[:8]]
        self.engine = InferenceEngine(EngineSettings(url=url, request_timeout_s=15), photos)
        self.events: list[InferenceEvent] = []
        self.engine.add_sink(self.events.append)
        self.concurrency = concurrency
        self._run: asyncio.Future[object] | None = None

    async def __aenter__(self) -> _Load:
        await self.engine.connect()
        self._run = asyncio.ensure_future(self.engine.run_automatic(self.concurrency))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.engine.stop()
        assert self._run is not None
        await asyncio.wait_for(self._run, timeout=30)
        await self.engine.close()

    def answered_since(self, moment: float) -> int:
        return sum(1 for e in self.events if e.ok and e.done_at >= moment)

    def check_nothing_lost(self) -> None:
        failed = [e for e in self.events if not e.ok]
        assert self.engine.sent == len(self.events), "every request ends as exactly one event"
        assert not failed, f"{len(failed)} failed; first: {failed[0].error}"


def _rq_total(stack: LocalStack, name: str) -> int:
    hosts = read_upstream_hosts(stack.settings.admin_listen, 2.0, cluster="triton_grpc")
    return sum(h.rq_total for h in hosts if h.instance == name)


async def _until(predicate: Callable[[], bool], timeout: float) -> bool:
    return await asyncio.to_thread(wait_until, predicate, timeout, 0.05)


async def test_add_then_remove_under_load_loses_nothing(scaling_stack):
    stack = scaling_stack
    envoy_pid = stack.envoy_pid()
    async with _Load(stack.grpc_url) as load:
        await asyncio.sleep(PHASE_S)
        # Something else holds triton-1's gRPC port: the new instance takes the next index.
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", stack.settings.base_port + 10 + 1))
            squatter.listen()
            added = stack.add_instance()
        assert added == "triton-2"
        assert stack.target_instances == 2
        assert await asyncio.to_thread(stack.wait_settled, 30)
        # Envoy uses the new instance without a restart.
        assert await _until(lambda: _rq_total(stack, added) > 0, 5), "no traffic to the new one"
        await asyncio.sleep(PHASE_S)
        answered_by_new = _rq_total(stack, added)

        removed = stack.remove_instance()
        assert removed == added and stack.target_instances == 1
        assert stack.states()[1].state in ("draining", "stopped")
        assert await asyncio.to_thread(stack.wait_settled, 30)
        after_removal = time.monotonic()
        await asyncio.sleep(PHASE_S)
    load.check_nothing_lost()
    assert load.answered_since(after_removal) > 0, "the remaining instance kept serving"
    assert answered_by_new > 0
    states = stack.states()
    assert [(s.name, s.state) for s in states] == [("triton-0", "ready"), ("triton-2", "stopped")]
    assert states[1].pid is None
    names = {h.instance for h in read_upstream_hosts(stack.settings.admin_listen, 2.0)}
    assert names == {"triton-0"}, "the removed instance left Envoy's endpoints"
    assert stack.envoy_pid() == envoy_pid, "Envoy was never restarted"


async def test_scale_to_and_a_killed_instance_is_restarted_under_load(scaling_stack):
    stack = scaling_stack
    events: list[StackEvent] = []
    stack.add_listener(events.append)
    try:
        async with _Load(stack.grpc_url, concurrency=12) as load:
            stack.scale_to(2)
            assert await asyncio.to_thread(stack.wait_settled, 30)
            await asyncio.sleep(PHASE_S)
            before = stack.states()[1]
            victim = before.name
            killed_at = time.monotonic()
            stack.kill_instance(victim)
            # The supervisor notices within 2 s and restarts it.
            assert await _until(lambda: any(e.kind == "down" for e in events), 2.5)
            down = next(e for e in events if e.kind == "down")
            assert down.instance == victim and down.at - killed_at < 2.0
            assert await _until(lambda: stack.states()[1].state == "ready", 30)
            after = stack.states()[1]
            assert after.restarts == before.restarts + 1 and after.pid != before.pid
            await asyncio.sleep(PHASE_S)

            restarted_at = time.monotonic()
            stack.restart_instance(victim)
            assert await _until(lambda: stack.states()[1].state == "draining", 2)
            assert await asyncio.to_thread(stack.wait_settled, 30)
            assert stack.states()[1].restarts == before.restarts + 2
            await asyncio.sleep(PHASE_S)
            stack.scale_to(1)
            assert await asyncio.to_thread(stack.wait_settled, 30)
    finally:
        stack.remove_listener(events.append)
    load.check_nothing_lost()
    assert load.answered_since(restarted_at) > 0
    kinds = [(e.instance, e.kind) for e in events]
    for expected in [
        (victim, "killed"),
        (victim, "down"),
        (victim, "restarting"),
        (victim, "draining"),
        (victim, "stopped"),
    ]:
        assert expected in kinds, kinds


async def test_a_killed_envoy_is_noticed_and_restarted(scaling_stack):
    stack = scaling_stack
    events: list[StackEvent] = []
    stack.add_listener(events.append)
    try:
        old = stack.envoy_pid()
        assert old is not None
        killed_at = time.monotonic()
        os.kill(old, signal.SIGKILL)
        assert await _until(lambda: any(e.kind == "envoy_down" for e in events), 2.5)
        assert next(e for e in events if e.kind == "envoy_down").at - killed_at < 2.0
        assert await _until(lambda: any(e.kind == "envoy_ready" for e in events), 15)
        new = stack.envoy_pid()
        assert new is not None and new != old
        # It serves the current set at once.
        assert await _until(lambda: stack.envoy_host_health() == {"triton-0": "healthy"}, 10)
        async with _Load(stack.grpc_url, concurrency=4) as load:
            await asyncio.sleep(1.0)
        load.check_nothing_lost()
        assert load.events
    finally:
        stack.remove_listener(events.append)


def test_without_restart_a_dead_instance_stays_down(stack_settings):
    with LocalStack(stack_settings(1, with_envoy=False, restart=False)) as stack:
        pid = stack.states()[0].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: stack.states()[0].state == "down", 2.0)
        time.sleep(1.0)
        state = stack.states()[0]
        assert state.state == "down" and state.restarts == 0 and state.pid is None


async def test_serve_autoscale_follows_envoys_request_time(scaling_stack):
    """`flowerdemo serve --autoscale`'s loop on the real stack: Envoy's p90 over a budget far too
    small adds an instance; under a budget far too large, the extra one is removed."""
    stack = scaling_stack
    assert stack.wait_settled(30) and stack.target_instances == 1
    tight = AutoscalePolicy(minimum=1, maximum=2, budget_s=0.0001, over_for_s=1.0, cooldown_s=0)
    scaler = _Autoscaler(stack, tight)
    decisions = []
    async with _Load(stack.grpc_url, concurrency=4) as load:
        deadline = time.monotonic() + 15
        while not decisions and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            decision = await asyncio.to_thread(scaler.step)
            if decision is not None:
                decisions.append(decision)
        assert [(d.before, d.target) for d in decisions] == [(1, 2)], decisions
        assert "over the 0.1 ms budget" in decisions[0].reason
        assert stack.target_instances == 2
        assert await asyncio.to_thread(stack.wait_settled, 30)

        loose = AutoscalePolicy(minimum=1, maximum=2, budget_s=100.0, under_for_s=1.0, cooldown_s=0)
        scaler = _Autoscaler(stack, loose)
        deadline = time.monotonic() + 15
        while len(decisions) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            decision = await asyncio.to_thread(scaler.step)
            if decision is not None:
                decisions.append(decision)
        assert [(d.before, d.target) for d in decisions[1:]] == [(2, 1)], decisions
        assert await asyncio.to_thread(stack.wait_settled, 30)
    load.check_nothing_lost()
