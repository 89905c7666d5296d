"""ResNet-50 FP16 scaling on one GPU: Triton instances behind Envoy, our engine and perf_analyzer.

Runs on the GPU machine after `stage.sh` (README.md here gives the exact device calls). For each
configuration it writes the ResNet-50 repository (resnet50_model.py), starts the stack through
flowerdemo's LocalStack (Envoy in front), sweeps concurrency through Envoy with our engine
(driven from several processes, merged: multiload.py), then perf_analyzer at the same point,
and writes CSVs in perf_analyzer's layout, charts and a summary with the issue's figures.

Configurations (--configs, run in the order given):
  whole     one Triton owning the whole GPU, no MPS (its model has M instances, default 2)
  mpsK      K Tritons sharing the GPU, each a CUDA MPS client limited to --mps-percentage (14)
            of the SMs: the stand-in for K 1g MIG slices. NOT MIG, and every chart says so.
  wholexM, mpsKxM   the same with M model instances per Triton (default: whole 2, mps 1)
  cpu       (with --cpu) one Triton on the CPU: the whole driver path, checkable anywhere
  NAME-u8   the model takes UINT8 pixels (scaled on the GPU): 4x fewer bytes per request;
            our engine sends raw pixels (scaling "none")
  NAME-direct  (one Triton only) our engine and perf_analyzer talk to Triton's own gRPC port,
            no Envoy: a diagnostic of Envoy's cost, swept at --direct-concurrency
  e.g. whole-u8, whole-u8-direct, whole-direct, mps1-u8, mps7-u8, cpu-u8-direct

Time: every phase is guarded by --deadline-epoch (or --budget-s); what is done is written to
--out after every configuration, so a late stop still leaves results. Results also go to
--state-dir (default HOME/results), so a later device call's summary includes earlier ones.

    python3 benchmarks/gpu/run_gpu_bench.py --out $OUT --configs whole,mps1,mps7
    python3 benchmarks/gpu/run_gpu_bench.py --dry-run --configs whole,mps1,mps7
    python3 benchmarks/gpu/run_gpu_bench.py --cpu --out /tmp/cpu-check   # here, no GPU
    python3 benchmarks/gpu/run_gpu_bench.py --summarize OUT_B OUT_C --out benchmarks/results/x
    python3 benchmarks/gpu/run_gpu_bench.py --live-report benchmarks/results/x/live
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
for _path in (str(ROOT), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

# Standard library only at import time, up to maybe_reexec (see gpubench/__init__.py).
import resnet50_model  # noqa: E402
from gpubench.ceiling import run_ceiling, torch_limits  # noqa: E402
from gpubench.ceiling_report import write_ceiling_report  # noqa: E402
from gpubench.configs import (  # noqa: E402
    BUDGET_MS,
    DEFAULT_HOME,
    build_plan,
    describe_plan,
)
from gpubench.live import live_report, run_live  # noqa: E402
from gpubench.machine import Deadline, gpu_name, log, machine_info, maybe_reexec  # noqa: E402
from gpubench.measure import run_plan  # noqa: E402
from gpubench.mps import mps_check  # noqa: E402
from gpubench.report import OUT_FILES, run_plot_jobs, summarize_folders, write_outputs  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT", "gpu-bench-out")),
        help="where the result files go (default $OUT)",
    )
    parser.add_argument(
        "--configs", help="comma-separated (default whole,mps1,mps7; --cpu: cpu or cpu variants)"
    )
    parser.add_argument("--concurrency", help="list or range (default 1,2,4,...,256; --cpu: 1,2)")
    parser.add_argument(
        "--direct-concurrency",
        help="for the -direct (diagnostic) configurations (default 1,8,64,256; --cpu: 1,2)",
    )
    parser.add_argument("--window", type=float, default=1.0, help="seconds per measurement window")
    parser.add_argument("--stable-windows", type=int, default=3)
    parser.add_argument("--max-windows", type=int, default=5)
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument(
        "--load-processes", type=int, help="processes driving our engine (default 8; --cpu 2)"
    )
    parser.add_argument(
        "--envoy-workers", type=int, help="Envoy worker threads (default 8; --cpu 1)"
    )
    parser.add_argument("--mps-percentage", type=int, default=14)
    parser.add_argument("--whole-model-instances", type=int, default=2)
    parser.add_argument("--mps-model-instances", type=int, default=1)
    parser.add_argument("--whole-copy-threads", type=int, default=4)
    parser.add_argument("--mps-copy-threads", type=int, default=2)
    parser.add_argument(
        "--buckets", default=",".join(str(b) for b in resnet50_model.DEFAULT_BUCKETS)
    )
    parser.add_argument("--max-queue-delay-us", type=int, default=100)
    parser.add_argument("--budget-ms", type=float, default=BUDGET_MS)
    parser.add_argument(
        "--weights",
        default="auto",
        help="state dict for the model ('auto': HOME/weights if staged, else random)",
    )
    parser.add_argument(
        "--perf-analyzer", help="perf_analyzer binary (default: HOME/perf, else .venv-perf)"
    )
    parser.add_argument("--perf-libs", help="LD_LIBRARY_PATH for perf_analyzer")
    parser.add_argument("--no-perf-analyzer", action="store_true")
    parser.add_argument("--base-port", type=int, default=8000)
    parser.add_argument("--listen", default="127.0.0.1:50050")
    parser.add_argument("--http-listen", default="127.0.0.1:50051")
    parser.add_argument("--admin-listen", default="127.0.0.1:50052")
    parser.add_argument(
        "--home", type=Path, default=Path(os.environ.get("FLOWERDEMO_GPU_HOME", DEFAULT_HOME))
    )
    parser.add_argument(
        "--state-dir", type=Path, help="results kept across device calls (default HOME/results)"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="forget results of earlier calls in --state-dir"
    )
    parser.add_argument(
        "--plot-python",
        help="python with matplotlib, used if ours cannot draw (default: the machine's)",
    )
    parser.add_argument(
        "--deadline-epoch", type=float, help="stop everything by this time (seconds since 1970)"
    )
    parser.add_argument(
        "--budget-s", type=float, help="or: stop within this many seconds (default 540)"
    )
    parser.add_argument(
        "--cpu", action="store_true", help="tiny run on the CPU: checks the whole driver path here"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan and the commands, run nothing"
    )
    parser.add_argument(
        "--summarize",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="merge results.tar.gz of these output folders into --out (no run)",
    )
    parser.add_argument(
        "--mps-check",
        action="store_true",
        help="start MPS, time the model at --mps-percentage without Triton, stop MPS",
    )
    parser.add_argument(
        "--ceiling",
        metavar="SETS",
        help="where the ceiling comes from: the named measurement sets (instances, mps; "
        "with --cpu: cpu), results in OUT/ceiling.json (gpubench/ceiling.py)",
    )
    parser.add_argument(
        "--live",
        metavar="MODES",
        help="Figure 6 live: autoscale and/or fixedK runs (e.g. autoscale,fixed7) while the "
        "concurrency ramps through --live-steps (gpubench/live.py); results in --out",
    )
    parser.add_argument("--live-steps", default="1,2,4,8,16,32,64,128,256")
    parser.add_argument("--live-step-s", type=float, default=15.0, help="seconds at each step")
    parser.add_argument("--live-max", type=int, default=7, help="autoscale's MAX instances")
    parser.add_argument(
        "--live-report",
        type=Path,
        metavar="DIR",
        help="a live run's folder (live.json, timeline-*.csv, probe-*.csv): print a markdown "
        "table per mode, one row per step (no run)",
    )
    parser.add_argument(
        "--torch-limit",
        action="store_true",
        help="the model alone: img/s per batch on the whole GPU and as 1 and 7 MPS clients",
    )
    parser.add_argument(
        "--limit-buckets", default="1,8,32,64,128,256", help="batch sizes for --torch-limit"
    )
    parser.add_argument(
        "--limit-mps-clients",
        default="1,7",
        help="--torch-limit: MPS client counts to measure after the whole GPU ('' for none)",
    )
    parser.add_argument(
        "--ceiling-report",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="ceiling.json and torch-limit.json files: write the table and charts to --out",
    )
    parser.add_argument("--plot-jobs", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plot_jobs:
        run_plot_jobs(args.plot_jobs)
        print("plots: done")
        return 0
    if args.summarize:
        return summarize_folders(args.summarize, args.out, args.budget_ms)
    if args.mps_check:
        return mps_check(args.mps_percentage)
    if args.torch_limit:
        clients = tuple(int(k) for k in args.limit_mps_clients.split(",") if k.strip())
        return torch_limits(args.out, args.mps_percentage, args.limit_buckets, args.window, clients)
    if args.ceiling_report:
        return write_ceiling_report(args.ceiling_report, args.out)
    if args.live_report:
        print(live_report(args.live_report), end="")
        return 0
    home: Path = args.home
    if not args.dry_run and not args.cpu:
        maybe_reexec(home, Path(__file__))
    if (home / "bin").is_dir():
        # The carried envoy; LocalStack looks for it on PATH.
        os.environ["PATH"] = os.pathsep.join([str(home / "bin"), os.environ.get("PATH", "")])
    deadline = Deadline.from_args(args.deadline_epoch, args.budget_s)
    plan = build_plan(args, home)
    plan_text = describe_plan(plan, deadline)
    print(plan_text, flush=True)
    if args.dry_run:
        print(
            f"results: {args.out} ({', '.join(OUT_FILES)}); kept across calls in {args.state_dir or home / 'results'}"
        )
        return 0
    if not plan.perf_analyzer:
        log("perf_analyzer: not found or off; only our engine will be measured")
    if args.live:
        gpu = "CPU" if args.cpu else gpu_name()
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "machine.txt").write_text(machine_info(home, plan))
        return run_live(
            plan,
            args.out,
            deadline,
            gpu,
            cpu_check=args.cpu,
            modes=[m.strip() for m in args.live.split(",") if m.strip()],
            steps=[int(c) for c in args.live_steps.split(",")],
            step_s=args.live_step_s,
            maximum=args.live_max,
        )
    if args.ceiling:
        gpu = "CPU" if args.cpu else gpu_name()
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "machine.txt").write_text(machine_info(home, plan))
        return run_ceiling(args.ceiling, plan, args.out, deadline, gpu, cpu_check=args.cpu)
    if args.cpu:
        try:
            import torch  # noqa: F401  (Triton's stub runs the python beside this one)
        except ImportError:
            print(
                "run_gpu_bench --cpu: this python has no torch, but Triton's stub runs the python3 "
                "beside it: run it with a venv made by stage.sh (see README.md)",
                file=sys.stderr,
            )
            return 2

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    results: Path = args.state_dir or (
        Path(tempfile.mkdtemp(prefix="flowerdemo-cpu-check-")) if args.cpu else home / "results"
    )
    if args.fresh:
        shutil.rmtree(results, ignore_errors=True)
    results.mkdir(parents=True, exist_ok=True)
    # Each device call's plan, kept with the results that call left (--fresh starts over).
    earlier = (results / "plan.txt").read_text() if (results / "plan.txt").exists() else ""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    plan_text = f"{earlier}run of {stamp}:\n{plan_text}\n"
    (results / "plan.txt").write_text(plan_text)
    plot_python = args.plot_python or (
        (home / "base_python.txt").read_text().strip()
        if (home / "base_python.txt").exists()
        else None
    )
    gpu = "CPU" if args.cpu else gpu_name()
    (results / "machine.txt").write_text(machine_info(home, plan))
    failures = 0
    try:
        failures = run_plan(
            plan,
            results,
            deadline,
            gpu,
            after_each=lambda: write_outputs(
                results, args.out, plan_text, plan.budget_ms, plot_python
            ),
        )
    finally:
        write_outputs(results, args.out, plan_text, plan.budget_ms, plot_python)
        log(
            f"results in {args.out}: {', '.join(sorted(p.name for p in args.out.iterdir())) if args.out.exists() else 'none'}"
        )
        if args.cpu and args.state_dir is None:
            shutil.rmtree(results, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
