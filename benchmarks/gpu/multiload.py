"""Our engine's concurrency sweep, driven from several processes and merged.

One Python process (one event loop, one gRPC connection) cannot keep ~8,000 batch-1 requests
of 600 KB a second moving, so the load comes from P worker processes, each running one
`InferenceEngine` on its own connection. At concurrency c, worker i keeps c // P (+1 for the
first c % P workers) requests outstanding; below P only c workers send.

The step is measured as `flowerdemo.core.sweep.run_sweep` measures it, across all workers at
once: every worker cuts its windows at the same instants (CLOCK_MONOTONIC is one clock for all
processes of a machine), the parent merges window k of every worker (throughputs add, latency
samples are pooled), and applies the same stability rule (`is_stable`) to the merged windows.
With P = 1 this is run_sweep in another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

from flowerdemo.core.sweep import (
    SweepSettings,
    SweepStep,
    WindowMeasurement,
    is_stable,
    step_from_windows,
)


class LoadError(RuntimeError):
    pass


@dataclass(frozen=True)
class LoadSettings:
    url: str
    model: str
    processes: int = 4
    images_dir: Path | None = None
    request_timeout_s: float = 10.0
    topk: int = 3
    start_timeout_s: float = 120.0
    scaling: str = "inception"
    """The engine's pixel scaling: "none" for a model that takes UINT8 pixels."""
    batch_size: int = 1
    """Images per request."""
    grpc_calls: Literal["stream", "unary"] = "stream"
    """The engine's gRPC requests: "stream" (this benchmark's choice since run 5: the lighter
    path) or "unary" (the client's default)."""


def shares(concurrency: int, processes: int) -> list[int]:
    """Requests outstanding per worker: c spread as evenly as possible, zeros left out."""
    base, extra = divmod(concurrency, processes)
    return [s for s in (base + (1 if i < extra else 0) for i in range(processes)) if s > 0]


@dataclass(frozen=True)
class WindowPart:
    """One worker's share of one window."""

    duration_s: float
    images: int
    latencies: bytes  # array('d') of seconds
    failed: int


def merge_windows(parts: Sequence[WindowPart]) -> WindowMeasurement:
    """Window k of every worker as one window: throughputs add, latencies pool."""
    latencies: list[float] = []
    images_per_s = requests_per_s = 0.0
    failed = 0
    for part in parts:
        samples = array("d")
        samples.frombytes(part.latencies)
        latencies.extend(samples)
        duration = max(part.duration_s, 1e-9)
        images_per_s += part.images / duration
        requests_per_s += len(samples) / duration
        failed += part.failed
    return WindowMeasurement(images_per_s, requests_per_s, tuple(latencies), failed)


# ----- the worker process --------------------------------------------------------------------


class _Collector:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.latencies = array("d")
        self.images = 0
        self.failed = 0
        self.since = time.monotonic()

    def __call__(self, event: Any) -> None:
        if event.ok:
            self.latencies.append(event.latency_s)
            self.images += event.batch_size
        else:
            self.failed += 1

    def take(self) -> WindowPart:
        now = time.monotonic()
        part = WindowPart(now - self.since, self.images, self.latencies.tobytes(), self.failed)
        self.latencies, self.images, self.failed, self.since = array("d"), 0, 0, now
        return part


def _worker(settings: LoadSettings, commands: Connection, results: Connection) -> None:
    try:
        asyncio.run(_serve(settings, commands, results))
    except Exception as error:  # tell the parent instead of dying silently
        with contextlib.suppress(OSError):
            results.send(("error", f"{type(error).__name__}: {error}"))


async def _serve(settings: LoadSettings, commands: Connection, results: Connection) -> None:
    from flowerdemo.core.engine import EngineSettings, InferenceEngine
    from flowerdemo.core.images import load_images
    from flowerdemo.core.preprocess import SCALINGS, PreprocessOptions
    from flowerdemo.resources import sample_images_dir

    photos = [i.image for i in load_images(settings.images_dir or sample_images_dir()).images]
    engine = InferenceEngine(
        EngineSettings(
            url=settings.url,
            model_name=settings.model,
            request_timeout_s=settings.request_timeout_s,
            topk=settings.topk,
            batch_size=settings.batch_size,
            grpc_calls=settings.grpc_calls,
            preprocess=PreprocessOptions(
                scaling=next(s for s in SCALINGS if s == settings.scaling)
            ),
        ),
        photos,
    )
    spec = await engine.connect()
    collector = _Collector()
    engine.add_sink(collector)
    results.send(("ready", spec.describe()))
    loop = asyncio.get_running_loop()
    try:
        while True:
            command = await loop.run_in_executor(None, commands.recv)
            if command[0] == "quit":
                return
            _, share, start_at, window_s = command
            automatic = asyncio.ensure_future(engine.run_automatic(share))
            await asyncio.sleep(max(0.0, start_at - time.monotonic()))
            collector.reset()
            end = loop.run_in_executor(None, commands.recv)
            index = 1
            while True:
                cut = start_at + index * window_s
                done, _ = await asyncio.wait({end}, timeout=max(0.0, cut - time.monotonic()))
                if done:
                    break
                results.send(("window", index, collector.take()))
                index += 1
            engine.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await automatic
            results.send(("ended", collector.take().failed))
    finally:
        await engine.close()


# ----- the parent ----------------------------------------------------------------------------


@dataclass
class _Worker:
    process: Any
    commands: Connection
    results: Connection


class LoadPool:
    """P worker processes connected to one server; `measure(c)` gives one merged SweepStep."""

    def __init__(self, settings: LoadSettings) -> None:
        if settings.processes < 1:
            raise ValueError("processes: 1 or more")
        self.settings = settings
        self._workers: list[_Worker] = []
        self.model_description = ""

    def __enter__(self) -> LoadPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        for _ in range(self.settings.processes):
            command_read, command_write = context.Pipe(duplex=False)
            result_read, result_write = context.Pipe(duplex=False)
            process = context.Process(
                target=_worker, args=(self.settings, command_read, result_write), daemon=True
            )
            process.start()
            self._workers.append(_Worker(process, command_write, result_read))
        deadline = time.monotonic() + self.settings.start_timeout_s
        for index, worker in enumerate(self._workers):
            kind, payload = self._receive(worker, index, deadline - time.monotonic())
            if kind != "ready":
                raise LoadError(f"load worker {index}: {payload}")
            self.model_description = payload

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (to read their CPU use from /proc)."""
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def _receive(self, worker: _Worker, index: int, timeout: float) -> tuple[Any, ...]:
        if not worker.results.poll(max(0.0, timeout)):
            alive = worker.process.is_alive()
            raise LoadError(
                f"load worker {index}: no answer within {timeout:.0f} s"
                + ("" if alive else f" (it exited with code {worker.process.exitcode})")
            )
        message: tuple[Any, ...] = worker.results.recv()
        if message[0] == "error":
            raise LoadError(f"load worker {index}: {message[1]}")
        return message

    def measure(
        self,
        concurrency: int,
        settings: SweepSettings,
        deadline: float | None = None,
        workers: int | None = None,
    ) -> SweepStep:
        """One concurrency step: settle half a window, then windows until stable or max_windows
        (or until the next window would end after `deadline`, a time.monotonic() value).
        `workers`: spread the load over the first k worker processes only (default all)."""
        split = shares(concurrency, min(workers or len(self._workers), len(self._workers)))
        active = list(enumerate(self._workers))[: len(split)]
        start_at = time.monotonic() + settings.window_s / 2
        for (_, worker), share in zip(active, split, strict=True):
            worker.commands.send(("step", share, start_at, settings.window_s))
        windows: list[WindowMeasurement] = []
        try:
            while len(windows) < settings.max_windows:
                timeout = settings.window_s * 3 + 30
                parts = []
                for index, worker in active:
                    kind, _number, part = self._receive(worker, index, timeout)
                    if kind != "window":
                        raise LoadError(f"load worker {index}: unexpected {kind}")
                    parts.append(part)
                windows.append(merge_windows(parts))
                if is_stable(windows, settings.stable_windows, settings.tolerance):
                    break
                if deadline is not None and time.monotonic() + settings.window_s > deadline:
                    break
        except BaseException:
            # Interrupted (a deadline signal, a dead worker): tell the others, wait briefly.
            for _, worker in active:
                with contextlib.suppress(OSError):
                    worker.commands.send(("end",))
            raise
        for _, worker in active:
            worker.commands.send(("end",))
        # Windows cut after "end" was sent are dropped; "ended" closes the step once the
        # worker's outstanding requests are answered.
        for index, worker in active:
            while self._receive(worker, index, settings.window_s + 30)[0] != "ended":
                pass
        return step_from_windows(concurrency, windows, settings)

    def close(self) -> None:
        for worker in self._workers:
            with contextlib.suppress(OSError, BrokenPipeError):
                worker.commands.send(("quit",))
        for worker in self._workers:
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
        self._workers.clear()
