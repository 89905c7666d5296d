"""Where the serving ceiling comes from: the same stack measured with one thing varied at a
time (model instances per Triton, client processes, Envoy workers, batch-8 requests, direct to
Triton instead of through Envoy, our engine or perf_analyzer), each measurement with the CPU
that every process and thread of the path used (/proc), the machine's idle CPU, the GPU's
utilisation and the stub's own timing of `execute` (GPU time against host time per batch).

Each measurement names the component nearest saturation: the one whose busiest thread (or the
stub's share of time inside `execute`, or the GPU's utilisation) is highest; 1.0 is one core
busy all the time. Results go to `ceiling.json` after every measurement; the report
(`--ceiling-report`, here) turns it into the table and the charts.

The model alone (no Triton) is measured by `torch_limits`: img/s per batch size on the whole
GPU, as one MPS client at 14% and as seven MPS clients at once (NOT MIG).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from gpubench.configs import MODEL, TEARDOWN_RESERVE_S, Config, Plan, parse_configs
from gpubench.machine import Deadline, environment, log
from gpubench.measure import perf_analyzer_point, stack_parts
from gpubench.mps import Mps
from gpubench.probe import GpuSampler, ProcessSample, StubTiming

HERE = Path(__file__).resolve().parent.parent
SATURATED = 0.85  # a thread (or the GPU) busy this share of the time or more counts as the cap


@dataclass(frozen=True)
class Probe:
    """One measurement on a running stack; `varied` says what differs from the baseline."""

    varied: str
    client: str  # "ours" or "perf_analyzer"
    concurrency: int
    batch: int = 1
    processes: int = 8  # our engine's worker processes
    path: str = "envoy"  # "envoy" or "direct" (Triton 0's own gRPC port)
    envoy_workers: int = 0  # 0: the stack's Envoy; else an extra Envoy with this many workers

    def describe(self) -> str:
        who = f"ours x{self.processes}" if self.client == "ours" else "perf_analyzer"
        where = "direct" if self.path == "direct" else f"Envoy {self.envoy_workers or 'stack'}w"
        return f"{who} {where} c={self.concurrency} b={self.batch}"


@dataclass(frozen=True)
class Experiment:
    config: str  # a configuration name (configs.parse_configs)
    probes: tuple[Probe, ...]
    copy_threads: int | None = None  # the model's torch threads, if not the configuration's

    @property
    def name(self) -> str:
        return self.config + (f"-ct{self.copy_threads}" if self.copy_threads else "")


def _core(c: int, *, pa: bool = True, direct: bool = True) -> tuple[Probe, ...]:
    """Our engine and perf_analyzer through Envoy at c; perf_analyzer direct to Triton."""
    probes = [Probe("baseline", "ours", c)]
    if pa:
        probes.append(Probe("client: perf_analyzer", "perf_analyzer", c))
    if direct:
        probes.append(Probe("direct to Triton", "perf_analyzer", c, path="direct"))
    return tuple(probes)


def experiment_sets(envoy_workers: int) -> dict[str, tuple[Experiment, ...]]:
    """The named sets (--ceiling). The baseline is the UINT8 model on the whole GPU with two
    model instances, batch-1 requests at concurrency 128 from our engine in 8 processes,
    through Envoy with `envoy_workers` workers."""
    c = 128
    baseline = (
        Probe("baseline", "ours", c),
        Probe("client: perf_analyzer", "perf_analyzer", c),
        Probe("client processes: 4", "ours", c, processes=4),
        Probe("client processes: 12", "ours", c, processes=12),
        Probe("concurrency 256", "ours", 256),
        Probe("direct to Triton", "ours", c, path="direct"),
        Probe("direct to Triton", "perf_analyzer", c, path="direct"),
        Probe("batch-8 requests", "ours", c // 8, batch=8),
        Probe("batch-8 requests", "perf_analyzer", c // 8, batch=8),
        Probe("batch-8 requests, c=32", "perf_analyzer", 32, batch=8),
        *tuple(
            Probe(f"Envoy workers: {w}", "perf_analyzer", c, envoy_workers=w)
            for w in (2, 4, 16)
            if w != envoy_workers
        ),
    )
    return {
        "instances": (
            Experiment("wholex2-u8", baseline),
            Experiment("wholex1-u8", _core(c)),
            Experiment(
                "wholex4-u8",
                (*_core(c), Probe("batch-8 requests", "perf_analyzer", 32, batch=8)),
            ),
            Experiment(
                "wholex8-u8",
                (*_core(c), Probe("batch-8 requests", "perf_analyzer", 32, batch=8)),
            ),
        ),
        "mps": (
            Experiment(
                "mps1-u8",
                (
                    *tuple(Probe(f"sweep c={k}", "ours", k) for k in (8, 16, 32, 64)),
                    Probe("client: perf_analyzer", "perf_analyzer", 32),
                    Probe("batch-8 requests", "ours", 4, batch=8),
                    Probe("batch-8 requests", "ours", 8, batch=8),
                    Probe("batch-8 requests", "perf_analyzer", 4, batch=8),
                    Probe("batch-8 requests", "perf_analyzer", 8, batch=8),
                ),
            ),
            Experiment(
                "mps7-u8",
                (
                    *tuple(Probe(f"sweep c={k}", "ours", k) for k in (64, 128, 256)),
                    Probe("client: perf_analyzer", "perf_analyzer", 128),
                    Probe("client processes: 12", "ours", 256, processes=12),
                    Probe("batch-8 requests", "ours", 16, batch=8),
                    Probe("batch-8 requests", "ours", 32, batch=8),
                    Probe("batch-8 requests", "perf_analyzer", 32, batch=8),
                    Probe("batch-8 requests", "perf_analyzer", 56, batch=8),
                ),
            ),
        ),
        # The first rounds left torch's intra-op threads at 4 (whole) and 2 (mps) per model
        # instance, for the host copies: measured, they take whole cores. One thread each:
        "threads": (
            Experiment(
                "wholex2-u8",
                (
                    *_core(c),
                    Probe("batch-8 requests", "ours", 16, batch=8),
                    Probe("batch-8 requests", "perf_analyzer", 32, batch=8),
                ),
                copy_threads=1,
            ),
            Experiment(
                "wholex4-u8",
                (
                    *_core(c),
                    Probe("batch-8 requests", "ours", 16, batch=8),
                    Probe("batch-8 requests", "perf_analyzer", 32, batch=8),
                ),
                copy_threads=1,
            ),
            Experiment(
                "wholex8-u8",
                (*_core(c, direct=False), Probe("batch-8 requests", "perf_analyzer", 32, batch=8)),
                copy_threads=1,
            ),
            Experiment(
                "mps7-u8",
                (
                    *(Probe(f"sweep c={k}", "ours", k) for k in (64, 128, 256)),
                    Probe("client: perf_analyzer", "perf_analyzer", 128),
                    *(Probe(f"batch-8 requests, c={k}", "ours", k, batch=8) for k in (16, 24, 32)),
                ),
                copy_threads=1,
            ),
            Experiment(
                "mps1-u8",
                (
                    *(Probe(f"sweep c={k}", "ours", k) for k in (16, 32, 64)),
                    Probe("batch-8 requests", "ours", 4, batch=8),
                    Probe("batch-8 requests, c=6", "ours", 6, batch=8),
                ),
                copy_threads=1,
            ),
        ),
        # Finer steps where the 5x and 8,000 img/s targets are decided (one torch thread).
        "fivex": (
            Experiment(
                "mps1-u8",
                (
                    *(Probe(f"sweep c={k}", "ours", k) for k in (24, 32, 40, 48)),
                    *(Probe(f"batch-8 requests, c={k}", "ours", k, batch=8) for k in (3, 4, 5)),
                ),
                copy_threads=1,
            ),
            Experiment(
                "mps7-u8",
                (
                    *(Probe(f"sweep c={k}", "ours", k) for k in (128, 160, 192, 224)),
                    *(Probe(f"batch-8 requests, c={k}", "ours", k, batch=8) for k in (20, 24, 28)),
                ),
                copy_threads=1,
            ),
            Experiment(
                "wholex4-u8",
                tuple(Probe(f"batch-8 requests, c={k}", "ours", k, batch=8) for k in (20, 24, 28)),
                copy_threads=1,
            ),
        ),
        # The whole path on the CPU here (bundled model, no GPU): checks the driver.
        "cpu": (
            Experiment(
                "cpu",
                (
                    Probe("baseline", "ours", 2, processes=2),
                    Probe("client processes: 1", "ours", 2, processes=1),
                    Probe("client: perf_analyzer", "perf_analyzer", 2),
                    Probe("direct to Triton", "ours", 2, processes=2, path="direct"),
                    Probe("batch-8 requests", "ours", 1, batch=8, processes=2),
                    Probe("batch-8 requests", "perf_analyzer", 1, batch=8),
                    Probe("Envoy workers: 2", "perf_analyzer", 2, envoy_workers=2),
                ),
            ),
        ),
    }


# ----- naming the cap ------------------------------------------------------------------------


def saturation(record: dict[str, Any]) -> dict[str, float]:
    """How near each component is to its limit, 0..1+: the busiest thread (one core = 1.0),
    for the stub the larger of that and its share of time inside `execute`, for the GPU its
    utilisation, for the machine its busy share of all cores."""
    components = record.get("cpu", {}).get("components", {})
    out: dict[str, float] = {}
    for name, entry in components.items():
        if name in ("driver", "mps server"):
            continue
        out[name] = float(entry.get("busiest_thread", 0.0))
    busy = record.get("stub", {}).get("busiest_instance")
    if busy is not None:
        out["python stub"] = max(out.get("python stub", 0.0), float(busy))
    gpu = record.get("gpu", {}).get("gpu_util_mean")
    stub = record.get("stub", {})
    if str(record.get("config", "")).startswith("mps"):
        # NVML's utilisation counts the time any MPS client had a kernel running (7 clients:
        # near 100% whatever each slice does): each slice's own device time share instead,
        # the share of time its stub spent in `execute`, scaled by device span / execute.
        shares = [v["busy"] for v in stub.get("instances", {}).values() if v.get("busy")]
        per_batch = stub.get("per_batch_ms", {})
        if shares and per_batch.get("execute"):
            ratio = per_batch["device_span"] / per_batch["execute"]
            out["GPU slices (device time)"] = sum(shares) / len(shares) * ratio
    elif gpu is not None:
        out["GPU"] = float(gpu) / 100
    idle = record.get("cpu", {}).get("machine_idle")
    if idle is not None:
        out["host CPU (all cores)"] = 1.0 - float(idle)
    return out


def name_cap(record: dict[str, Any]) -> str:
    levels = saturation(record)
    if not levels:
        return "not measured"
    name, value = max(levels.items(), key=lambda item: item[1])
    if value < SATURATED:
        return f"none saturated (highest: {name} {value:.2f})"
    return f"{name} {value:.2f}"


# ----- running ---------------------------------------------------------------------------------


class ExtraEnvoy:
    """A second Envoy in front of the same Tritons, with another worker count: the stack's own
    envoy.yaml with the three listener ports moved."""

    def __init__(self, stack: Any, plan: Plan, workers: int, first_port: int) -> None:
        from flowerdemo.serving.envoy import find_envoy

        assert stack.workdir is not None
        source = stack.workdir / "envoy.yaml"
        text = source.read_text()
        self.ports = (first_port, first_port + 1, first_port + 2)
        for old, new in zip(
            (plan.listen, plan.http_listen, plan.admin_listen), self.ports, strict=False
        ):
            port = old.rsplit(":", 1)[1]
            if f"port_value: {port}" not in text:
                raise RuntimeError(f"envoy.yaml has no port_value {port}")
            text = text.replace(f"port_value: {port}", f"port_value: {new}")
        path = stack.workdir / f"envoy-{workers}-workers.yaml"
        path.write_text(text)
        self.url = f"127.0.0.1:{self.ports[0]}"
        self.log = (stack.workdir / f"envoy-{workers}-workers.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(find_envoy()),
                "-c",
                str(path),
                "--concurrency",
                str(workers),
                "--disable-hot-restart",
                "--log-level",
                "warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=stack.workdir,
            start_new_session=True,
        )
        self.pid = self.process.pid
        self.wait_healthy(stack.instance_count, 20.0)

    def wait_healthy(self, hosts: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        admin = f"http://127.0.0.1:{self.ports[2]}/clusters"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"extra Envoy exited with code {self.process.returncode}")
            try:
                with urllib.request.urlopen(admin, timeout=1) as answer:
                    text = answer.read().decode(errors="replace")
                if text.count("health_flags::healthy") >= hosts:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"extra Envoy: upstreams not healthy within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.log.close()


def probe_seconds(plan: Plan, probe: Probe) -> float:
    """What one measurement takes at most (our engine: settle + windows; perf_analyzer: its
    own windows and start)."""
    if probe.client == "ours":
        return plan.window_s * (0.5 + plan.max_windows) + 2.0
    return plan.window_s * (plan.max_windows + 1) + 4.0


class CeilingRun:
    def __init__(
        self, plan: Plan, out: Path, deadline: Deadline, gpu: str, cpu_check: bool
    ) -> None:
        self.plan, self.out, self.deadline, self.gpu = plan, out, deadline, gpu
        self.cpu_check = cpu_check
        self.records: list[dict[str, Any]] = []
        self.stacks: list[dict[str, Any]] = []
        self.sampler = GpuSampler()
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        data = {
            "started": self.started,
            "gpu": self.gpu,
            "plan": {
                "window_s": self.plan.window_s,
                "stable_windows": self.plan.stable_windows,
                "max_windows": self.plan.max_windows,
                "tolerance": self.plan.tolerance,
                "envoy_workers": self.plan.envoy_workers,
                "buckets": list(self.plan.buckets),
                "max_queue_delay_us": self.plan.max_queue_delay_us,
                "perf_analyzer": self.plan.perf_command("URL", 0, "REPORT.csv")[1:-2]
                if self.plan.perf_analyzer
                else None,
            },
            "cpus": os.cpu_count(),
            "stacks": self.stacks,
            "records": self.records,
        }
        temporary = self.out / "ceiling.json.tmp"
        temporary.write_text(json.dumps(data, indent=1) + "\n")
        temporary.replace(self.out / "ceiling.json")

    def run(self, experiments: tuple[Experiment, ...]) -> int:
        mps = Mps(Path(tempfile.gettempdir()) / "flowerdemo-mps")
        failures = 0
        with self.sampler:
            try:
                for experiment in experiments:
                    config = parse_configs(
                        experiment.config,
                        mps_percentage=14,
                        whole_instances=2,
                        mps_instances=1,
                        whole_copy_threads=4,
                        mps_copy_threads=2,
                    )[0]
                    if experiment.copy_threads:
                        config = replace(config, copy_threads=experiment.copy_threads)
                    need = Plan.load_estimate_s(config) + 2 * probe_seconds(
                        self.plan, experiment.probes[0]
                    )
                    if self.deadline.left() - TEARDOWN_RESERVE_S < need:
                        log(f"ceiling {config.name}: skipped (time)")
                        self.stacks.append({"config": config.name, "status": "skipped: time"})
                        continue
                    if config.mps and not mps.running:
                        mps.start()
                    if not config.mps and mps.running:
                        mps.stop()
                    failures += not self.experiment(config, experiment, mps)
                    self.save()
            finally:
                mps.stop()
                self.save()
        return failures

    def experiment(self, config: Config, experiment: Experiment, mps: Mps) -> bool:
        from multiload import LoadPool, LoadSettings

        from flowerdemo.core.sweep import SweepSettings
        from flowerdemo.serving.stack import LocalStack, StackError, StackSettings

        work = Path(tempfile.mkdtemp(prefix=f"flowerdemo-ceiling-{config.name}-"))
        timing = work / "timing"
        model = MODEL
        if self.cpu_check:
            # The bundled CPU model: the driver's whole path without torch (no stub timing).
            model = "flowers"
            settings = StackSettings(
                instances=config.tritons,
                workdir=work / "stack",
                base_port=self.plan.base_port,
                listen=self.plan.listen,
                http_listen=self.plan.http_listen,
                admin_listen=self.plan.admin_listen,
                envoy_concurrency=self.plan.envoy_workers,
            )
            variables: dict[str, str] = {}
        else:
            _, settings, variables = stack_parts(
                config, self.plan, work, self.deadline, mps, str(timing)
            )
        stack_record: dict[str, Any] = {
            "config": experiment.name,
            "label": config.label,
            "copy_threads": config.copy_threads,
        }
        self.stacks.append(stack_record)
        stack = LocalStack(settings)
        pools: dict[tuple[str, int], Any] = {}
        envoys: dict[int, ExtraEnvoy] = {}
        sweep = SweepSettings(
            (1,),
            window_s=self.plan.window_s,
            tolerance=self.plan.tolerance,
            stable_windows=self.plan.stable_windows,
            max_windows=self.plan.max_windows,
        )
        scratch = work / "pa"
        scratch.mkdir()
        started = time.monotonic()
        try:
            log(f"ceiling {config.name}: starting ({config.label})")
            try:
                with environment(variables):
                    stack.start()
            except StackError as error:
                stack_record["status"] = f"failed to start: {error}"
                log(f"ceiling {config.name}: {error}")
                return False
            stack_record["ready_s"] = round(time.monotonic() - started, 1)
            stack_record["status"] = "ran"
            log(f"ceiling {config.name}: ready in {stack_record['ready_s']} s")
            for probe in experiment.probes:
                if self.deadline.left() - TEARDOWN_RESERVE_S < probe_seconds(self.plan, probe):
                    log(f"ceiling {config.name}: no time for {probe.describe()}")
                    stack_record["status"] = "cut short (time)"
                    break
                record: dict[str, Any] = {
                    "config": experiment.name,
                    "label": config.label,
                    "copy_threads": config.copy_threads,
                    **asdict(probe),
                }
                try:
                    if probe.path == "direct":
                        url = stack.instance_grpc_url(0)
                    elif probe.envoy_workers:
                        if probe.envoy_workers not in envoys:
                            envoys[probe.envoy_workers] = ExtraEnvoy(
                                stack, self.plan, probe.envoy_workers, 50070 + 3 * len(envoys)
                            )
                        url = envoys[probe.envoy_workers].url
                    else:
                        url = stack.grpc_url
                    record["url"] = url
                    clients: list[int] = []
                    pool = None
                    if probe.client == "ours":
                        key = (url, probe.batch)
                        if key not in pools:
                            wanted = max(
                                p.processes
                                for p in experiment.probes
                                if p.client == "ours"
                                and p.batch == probe.batch
                                and (p.path, p.envoy_workers) == (probe.path, probe.envoy_workers)
                            )
                            pools[key] = LoadPool(
                                LoadSettings(
                                    url=url,
                                    model=model,
                                    processes=wanted,
                                    scaling="none"
                                    if config.input_dtype == "uint8"
                                    else "inception",
                                    batch_size=probe.batch,
                                )
                            )
                            pools[key].start()
                        pool = pools[key]
                        clients = pool.pids[: probe.processes]
                    roots = {state.pid for state in stack.states() if state.pid}
                    roots |= {stack.envoy_pid() or 0} | {e.pid for e in envoys.values()}
                    before = ProcessSample.take(clients, roots)
                    stub_before = StubTiming.read(timing)
                    since = time.monotonic()
                    if pool is not None:
                        step = pool.measure(
                            probe.concurrency,
                            sweep,
                            deadline=self.deadline.at - TEARDOWN_RESERVE_S,
                            workers=probe.processes,
                        )
                        record.update(
                            grpc_calls=pool.settings.grpc_calls,
                            images_per_s=step.images_per_s,
                            p50_ms=step.latency.p50 * 1000,
                            p90_ms=step.latency.p90 * 1000,
                            p99_ms=step.latency.p99 * 1000,
                            failed=step.failed,
                            windows=step.windows,
                            stable=step.stable,
                        )
                    else:
                        # perf_analyzer lives only between the two /proc readings: its CPU
                        # time comes from the kernel's account of finished children.
                        children = resource.getrusage(resource.RUSAGE_CHILDREN)
                        command, row, error = perf_analyzer_point(
                            self.plan,
                            url,
                            probe.concurrency,
                            scratch,
                            self.deadline.left() - TEARDOWN_RESERVE_S,
                            probe.batch,
                            model,
                        )
                        record["command"] = command.replace(
                            "C:C", f"{probe.concurrency}:{probe.concurrency}"
                        )
                        if row:
                            record.update(
                                images_per_s=float(row["Inferences/Second"]),
                                p50_ms=_us_to_ms(row.get("p50 latency")),
                                p90_ms=_us_to_ms(row.get("p90 latency")),
                                p99_ms=_us_to_ms(row.get("p99 latency")),
                                stable=row.get("stable") == "yes",
                            )
                        if error:
                            record["error"] = error
                    record["cpu"] = before.usage_until(ProcessSample.take(clients, roots))
                    if pool is None:
                        done = resource.getrusage(resource.RUSAGE_CHILDREN)
                        used = (done.ru_utime - children.ru_utime) + (
                            done.ru_stime - children.ru_stime
                        )
                        seconds = record["cpu"]["seconds"]
                        record["cpu"]["components"]["perf_analyzer"] = {
                            "cores": round(used / seconds, 3),
                            "busiest_process": round(used / seconds, 3),
                            "busiest_thread": 0.0,  # not known for a finished process
                            "n": 1,
                        }
                    record["stub"] = stub_before.until(StubTiming.read(timing))
                    record["gpu"] = self.sampler.summary(since)
                except Exception as error:  # one measurement's failure must not lose the rest
                    record["error"] = f"{type(error).__name__}: {error}"
                record["cap"] = name_cap(record)
                self.records.append(record)
                self.save()
                log(
                    f"ceiling {experiment.name} {probe.describe()} [{probe.varied}]: "
                    f"{record.get('images_per_s', 0):8.1f} img/s p90 "
                    f"{record.get('p90_ms', float('nan')):7.2f} ms | GPU "
                    f"{record.get('gpu', {}).get('gpu_util_mean', '?')}% | idle CPU "
                    f"{record.get('cpu', {}).get('machine_idle', '?')} | cap: {record['cap']}"
                    + (f" | {record['error'][:160]}" if record.get("error") else "")
                )
            return True
        except Exception as error:
            stack_record["status"] = f"error: {type(error).__name__}: {error}"
            log(f"ceiling {config.name}: {stack_record['status']}")
            return False
        finally:
            for pool in pools.values():
                pool.close()
            for envoy in envoys.values():
                envoy.stop()
            if stack.workdir is not None:
                logs = [
                    line
                    for index in range(config.tritons)
                    if (path := stack.instance_log(index)) is not None and path.exists()
                    for line in path.read_text(errors="replace").splitlines()
                    if "resnet50 instance" in line or "error" in line.lower()
                ]
                stack_record["model_log"] = logs[-20:]
            stack.stop()
            shutil.rmtree(work, ignore_errors=True)


def _us_to_ms(value: Any) -> float | None:
    try:
        return float(value) / 1000
    except (TypeError, ValueError):
        return None


def run_ceiling(
    names: str, plan: Plan, out: Path, deadline: Deadline, gpu: str, cpu_check: bool
) -> int:
    sets = experiment_sets(plan.envoy_workers)
    experiments: list[Experiment] = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        if name not in sets:
            raise SystemExit(f"--ceiling {name}: one of {', '.join(sets)}")
        experiments += sets[name]
    return CeilingRun(plan, out, deadline, gpu, cpu_check).run(tuple(experiments))


# ----- the model alone -------------------------------------------------------------------------


def torch_limits(
    out: Path, mps_percentage: int, buckets: str, window_s: float, mps_clients: tuple[int, ...]
) -> int:
    """resnet50_model.py --limit on the whole GPU, then as 1 and as 7 MPS clients at
    `mps_percentage`% measured in the same windows; torch-limit.json in `out`."""
    script = str(HERE / "resnet50_model.py")
    results: dict[str, Any] = {"buckets": buckets, "window_s": window_s}

    def parse(text: str) -> list[dict[str, Any]]:
        found = []
        for line in text.splitlines():
            if line.startswith('{"limit"'):
                found.append(json.loads(line)["limit"])
        return found

    command = [sys.executable, script, "--limit", "--buckets", buckets, "--window", str(window_s)]
    log("model alone, whole GPU: " + " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    results["whole"] = parse(done.stdout) or done.stderr[-2000:]
    mps = Mps(Path(tempfile.gettempdir()) / "flowerdemo-mps-limit")
    try:
        if mps_clients:
            mps.start()
        for clients in mps_clients:
            folder = Path(tempfile.mkdtemp(prefix="flowerdemo-limit-"))
            start_file = folder / "start"
            env = {
                **os.environ,
                **mps.env,
                "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(mps_percentage),
            }
            # stderr to files: a full pipe nobody reads would stall a client while it loads.
            errors = [(folder / f"stderr-{k}.txt").open("w") for k in range(clients)]
            processes = [
                subprocess.Popen(
                    [*command, "--start-file", str(start_file)],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=errors[k],
                    text=True,
                )
                for k in range(clients)
            ]
            # Start the windows once every client has loaded (each prints "ready").
            assert all(p.stdout is not None for p in processes)
            ready_by = time.monotonic() + 180
            for process in processes:
                line = ""
                while time.monotonic() < ready_by and '"ready"' not in line:
                    line = process.stdout.readline() if process.stdout else ""
                    if not line and process.poll() is not None:
                        break
            start_file.write_text(str(time.time() + 0.5))
            outputs = []
            for k, process in enumerate(processes):
                stdout, _ = process.communicate(timeout=240)
                errors[k].close()
                text = (folder / f"stderr-{k}.txt").read_text(errors="replace")
                outputs += parse(stdout) or [{"error": text[-1000:]}]
            total: dict[str, float] = {}
            for output in outputs:
                for bucket, entry in output.get("buckets", {}).items():
                    total[bucket] = total.get(bucket, 0.0) + entry["graph_img_per_s"]
            results[f"mps{clients}"] = {"clients": outputs, "graph_img_per_s_total": total}
            log(f"model alone, {clients} MPS client(s) at {mps_percentage}%: {total}")
    except Exception as error:
        results["mps_error"] = f"{type(error).__name__}: {error}"
    finally:
        mps.stop()
    out.mkdir(parents=True, exist_ok=True)
    (out / "torch-limit.json").write_text(json.dumps(results, indent=1) + "\n")
    log(f"model alone: {out / 'torch-limit.json'}")
    return 0
