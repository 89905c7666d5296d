"""What to run: configurations, the plan of one device call, and its time estimates."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, replace
from pathlib import Path

import resnet50_model

from gpubench.machine import Deadline

HERE = Path(__file__).resolve().parent.parent
ROOT = HERE.parent.parent
DEFAULT_HOME = "/opt/flowerdemo-gpu"
MODEL = resnet50_model.MODEL_NAME
BUDGET_MS = 50.0
TARGETS = {
    "p50_c1_ms": 2.5,
    "peak_images_per_s": 8000.0,
    "scaling_7_vs_1": 5.0,
}
COLLAPSE_TOLERANCE = 0.05  # a fall below 95% of the best so far counts as a fall
TEARDOWN_RESERVE_S = 30.0


# ----- configurations and the plan -----------------------------------------------------------


@dataclass(frozen=True)
class Config:
    name: str
    tritons: int
    mps: bool
    model_instances: int
    kind: str = "gpu"
    copy_threads: int = 4
    mps_percentage: int = 14
    input_dtype: str = "fp32"
    direct: bool = False

    @property
    def variant(self) -> str:
        """What differs from the first round's setup, for titles and labels ('' if nothing)."""
        parts = []
        if self.input_dtype == "uint8":
            parts.append("UINT8 input")
        if self.direct:
            parts.append("direct, no Envoy: diagnostic")
        return ", ".join(parts)

    def title(self, gpu: str) -> str:
        suffix = f" [{self.variant}]" if self.variant else ""
        if self.kind == "cpu":
            return "CPU check: one Triton on the CPU (not a GPU measurement)" + suffix
        if self.mps:
            share = "one process" if self.tritons == 1 else f"{self.tritons} processes"
            return (
                f"{gpu}, NOT MIG: {share} sharing one GPU via MPS "
                f"({self.mps_percentage}% of the SMs each)" + suffix
            )
        return f"{gpu}: one Triton owning the whole GPU (no MPS)" + suffix

    @property
    def label(self) -> str:
        suffix = f" ({self.variant})" if self.variant else ""
        if self.kind == "cpu":
            return "1 Triton, CPU" + suffix
        if self.mps:
            return (
                f"{self.tritons} Triton{'s' if self.tritons > 1 else ''} x MPS {self.mps_percentage}%"
                + suffix
            )
        # Two whole-GPU runs can differ only in model instances: the label must tell them apart.
        instances = (
            f", {self.model_instances} model instance{'s' if self.model_instances > 1 else ''}"
        )
        return "1 Triton, whole GPU" + instances + suffix


def parse_configs(
    text: str,
    *,
    mps_percentage: int,
    whole_instances: int,
    mps_instances: int,
    whole_copy_threads: int,
    mps_copy_threads: int,
) -> list[Config]:
    configs = []
    for raw in (part.strip() for part in text.split(",")):
        if not raw:
            continue
        match = re.fullmatch(r"(whole|mps(\d+)|cpu)(?:x(\d+))?(-u8)?(-direct)?", raw)
        if not match:
            raise ValueError(
                f"configuration '{raw}': use whole, mpsK, wholexM, mpsKxM or cpu, "
                "optionally followed by -u8 and/or -direct"
            )
        kind, count, instances = match.group(1), match.group(2), match.group(3)
        input_dtype, direct = ("uint8" if match.group(4) else "fp32"), bool(match.group(5))
        if kind == "whole":
            config = Config(
                raw, 1, False, int(instances or whole_instances), "gpu", whole_copy_threads
            )
        elif kind == "cpu":
            config = Config(raw, 1, False, int(instances or 1), "cpu", 1)
        else:
            tritons = int(count)
            if not 1 <= tritons <= 48:
                raise ValueError(f"configuration '{raw}': 1 to 48 MPS clients")
            config = Config(
                raw,
                tritons,
                True,
                int(instances or mps_instances),
                "gpu",
                mps_copy_threads,
                mps_percentage,
            )
        if direct and config.tritons != 1:
            raise ValueError(
                f"configuration '{raw}': -direct needs one Triton (it bypasses Envoy, "
                "which is what spreads the load over several)"
            )
        configs.append(replace(config, input_dtype=input_dtype, direct=direct))
    if not configs:
        raise ValueError("no configuration given")
    return configs


@dataclass(frozen=True)
class Plan:
    configs: tuple[Config, ...]
    concurrencies: tuple[int, ...]
    direct_concurrencies: tuple[int, ...]
    window_s: float
    stable_windows: int
    max_windows: int
    tolerance: float
    load_processes: int
    envoy_workers: int
    base_port: int
    listen: str
    http_listen: str
    admin_listen: str
    perf_analyzer: str | None
    perf_libs: str
    weights: str
    buckets: tuple[int, ...]
    max_queue_delay_us: int
    budget_ms: float
    home: str

    def perf_command(
        self, url: str, concurrency: int, report: str, batch: int = 1, model: str = MODEL
    ) -> list[str]:
        assert self.perf_analyzer is not None
        return [
            self.perf_analyzer,
            "-m",
            model,
            "-u",
            url,
            "-i",
            "grpc",
            "-b",
            str(batch),
            "--concurrency-range",
            f"{concurrency}:{concurrency}",
            "--measurement-interval",
            str(int(self.window_s * 1000)),
            "--stability-percentage",
            str(int(self.tolerance * 100)),
            "--max-trials",
            str(self.max_windows),
            "--percentile",
            "90",
            "-v",
            "-f",
            report,
        ]

    def concurrencies_for(self, config: Config) -> tuple[int, ...]:
        """The diagnostic (direct) configurations sweep a shorter list."""
        return self.direct_concurrencies if config.direct else self.concurrencies

    def estimate_s(self, config: Config) -> float:
        """The bound the time guards use: stack start, every point at its slowest."""
        return self.load_estimate_s(config) + self.point_estimate_s() * len(
            self.concurrencies_for(config)
        )

    def typical_s(self, config: Config) -> float:
        """What a configuration took on the H100 in the first round: the stack ready in 15-23 s,
        load processes and teardown about 15 s more, 7-13 s a point (10 on average, with
        perf_analyzer; about 55% of that without)."""
        if config.kind == "cpu":
            return self.estimate_s(config)
        per_point = 10.0 if self.perf_analyzer else 5.5
        return (
            30.0
            + 1.0 * config.tritons * config.model_instances
            + per_point * len(self.concurrencies_for(config))
        )

    def point_estimate_s(self) -> float:
        ours = self.window_s * (0.5 + self.max_windows) + 0.5
        theirs = self.window_s * (self.max_windows + 1) + 2.0 if self.perf_analyzer else 0.0
        return ours + theirs

    @staticmethod
    def load_estimate_s(config: Config) -> float:
        if config.kind == "cpu":
            return 20.0
        return 45.0 + 4.0 * config.tritons * config.model_instances


def cpu_configs(text: str | None) -> str:
    """--cpu runs only CPU configurations: 'cpu' unless --configs names cpu variants."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    if names and all(n.startswith("cpu") for n in names):
        return ",".join(names)
    return "cpu"


def build_plan(args: argparse.Namespace, home: Path) -> Plan:
    from flowerdemo.core.sweep import parse_concurrency_range

    configs = parse_configs(
        cpu_configs(args.configs) if args.cpu else (args.configs or "whole,mps1,mps7"),
        mps_percentage=args.mps_percentage,
        whole_instances=args.whole_model_instances,
        mps_instances=args.mps_model_instances,
        whole_copy_threads=args.whole_copy_threads,
        mps_copy_threads=args.mps_copy_threads,
    )
    perf = args.perf_analyzer
    perf_libs = args.perf_libs
    if perf is None:
        staged = home / "perf" / "perf_analyzer"
        local = ROOT / ".venv-perf" / "bin" / "perf_analyzer"
        if staged.exists():
            perf, perf_libs = str(staged), perf_libs or str(home / "perf" / "lib")
        elif local.exists():
            perf = str(local)
            libs = sorted(
                (ROOT / ".venv-perf").glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib")
            )
            perf_libs = perf_libs or (str(libs[0]) if libs else "")
    if args.no_perf_analyzer:
        perf = None
    weights = args.weights
    if weights == "auto":
        staged_weights = (
            sorted((home / "weights").glob("*.pt")) if (home / "weights").is_dir() else []
        )
        parts = sorted((home / "weights").glob("*.pt.part0")) if (home / "weights").is_dir() else []
        weights = (
            str(staged_weights[0])
            if staged_weights
            else (str(parts[0])[: -len(".part0")] if parts else "")
        )
    base_port, listen, http_listen, admin = (
        args.base_port,
        args.listen,
        args.http_listen,
        args.admin_listen,
    )
    if args.cpu and args.base_port == 8000:
        from flowerdemo.serving.ports import free_port_block

        first = free_port_block(3 + 3)
        listen, http_listen, admin = (f"127.0.0.1:{first + k}" for k in range(3))
        base_port = first + 3
    concurrency = args.concurrency or ("1,2" if args.cpu else "1,2,4,8,16,32,64,128,256")
    direct = args.direct_concurrency or ("1,2" if args.cpu else "1,8,64,256")
    return Plan(
        configs=tuple(configs),
        concurrencies=parse_concurrency_range(concurrency),
        direct_concurrencies=parse_concurrency_range(direct),
        window_s=args.window,
        stable_windows=args.stable_windows,
        max_windows=args.max_windows,
        tolerance=args.tolerance,
        load_processes=args.load_processes or (2 if args.cpu else 8),
        envoy_workers=args.envoy_workers or (1 if args.cpu else 8),
        base_port=base_port,
        listen=listen,
        http_listen=http_listen,
        admin_listen=admin,
        perf_analyzer=perf,
        perf_libs=perf_libs or "",
        weights=weights or "",
        buckets=tuple(int(b) for b in args.buckets.split(",")),
        max_queue_delay_us=args.max_queue_delay_us,
        budget_ms=args.budget_ms,
        home=str(home),
    )


def describe_plan(plan: Plan, deadline: Deadline | None = None) -> str:
    lines = ["configurations, in order:"]
    for config in plan.configs:
        lines.append(
            f"  {config.name:<8} {config.label}: {config.tritons} Triton(s) x {config.model_instances} model instance(s), "
            f"{'CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=' + str(config.mps_percentage) if config.mps else 'no MPS'}, "
            f"{config.kind}, copy threads {config.copy_threads}, {config.input_dtype.upper()} input, "
            + (
                "direct to Triton's gRPC port (no Envoy: diagnostic)"
                if config.direct
                else "through Envoy"
            )
            + f", c = {','.join(str(c) for c in plan.concurrencies_for(config))}; "
            f"estimated {plan.typical_s(config):.0f} s (first round's H100 timings), "
            f"at most {plan.estimate_s(config):.0f} s"
        )
    lines.append(
        f"  in all: estimated {sum(plan.typical_s(c) for c in plan.configs):.0f} s, "
        f"at most {sum(plan.estimate_s(c) for c in plan.configs):.0f} s"
    )
    lines += [
        f"concurrency: {','.join(str(c) for c in plan.concurrencies)}; windows of {plan.window_s:g} s, "
        f"stable when the last {plan.stable_windows} agree within {plan.tolerance:.0%} (at most {plan.max_windows})",
        f"model: ResNet-50 FP16 ({plan.weights or 'random weights, seed 0'}), CUDA graphs for buckets {list(plan.buckets)}, "
        f"preferred_batch_size = buckets, max_batch_size {max(plan.buckets)}, max_queue_delay {plan.max_queue_delay_us} us",
        f"load: our engine in {plan.load_processes} processes through Envoy {plan.listen} ({plan.envoy_workers} Envoy workers); Tritons from port {plan.base_port}",
        "perf_analyzer: "
        + (
            " ".join(
                ["perf_analyzer", *plan.perf_command(plan.listen, 0, "REPORT.csv")[1:-2]]
            ).replace("0:0", "C:C")
            + f"  (LD_LIBRARY_PATH={plan.perf_libs})"
            if plan.perf_analyzer
            else "off"
        ),
        f"budget: p90 <= {plan.budget_ms:g} ms",
    ]
    if deadline is not None:
        lines.append(
            f"time left now: {deadline.left():.0f} s (teardown reserve {TEARDOWN_RESERVE_S:.0f} s)"
        )
    return "\n".join(lines)
