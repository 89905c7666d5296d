"""`flowerdemo serve`: run the local stack in the foreground, or write its configuration.

    flowerdemo serve --instances 3                      # three Tritons behind Envoy, until Ctrl-C
    flowerdemo serve --print-config out/ --device mig   # files and commands, nothing started

While the stack runs, lines typed on standard input control it: `add`, `remove [NAME]`,
`kill NAME`, `restart NAME`, `scale N`, `status`, `quit` (NAME: triton-K or K). What happens to
the stack (an instance ready, draining, down, restarted; Envoy down and back) is printed as it
happens. `--autoscale MIN:MAX` holds the latency budget by scaling between MIN and MAX instances,
watching the p90 of Envoy's upstream request time.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import queue
import re
import shlex
import signal
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TextIO

from flowerdemo.core.autoscale import AutoscaleController, AutoscalePolicy, ScaleDecision
from flowerdemo.core.stats import DEFAULT_PERCENTILE
from flowerdemo.core.text import clean_server_text
from flowerdemo.options import DEFAULT_BUDGET_MS
from flowerdemo.serving import envoy as envoy_config
from flowerdemo.serving.admin import AdminError, RequestTimeWindow
from flowerdemo.serving.devices import DeviceError, docker_gpus_value, resolve_devices
from flowerdemo.serving.plan import DEFAULT_BASE_PORT, DEFAULT_MODEL_NAME, DeploymentPlan
from flowerdemo.serving.plan import make_instances as plan_instances
from flowerdemo.serving.repository import (
    WIRES,
    RepositoryError,
    RepositoryOptions,
    wires_problem,
    write_repository,
)
from flowerdemo.serving.stack import (
    InstanceState,
    LocalStack,
    StackError,
    StackEvent,
    StackSettings,
    envoy_settings_for,
    resolve_model,
)
from flowerdemo.serving.triton import (
    TritonNotFound,
    container_command,
    find_triton,
    interpreter_bin_dir,
    prepare_backend_dir,
    shm_prefix,
    triton_command,
)
from flowerdemo.validation import output_dir_problem

TARGETS = ("local", "compose", "k8s")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n", "--instances", type=int, default=2, help="Triton instances (default: 2)"
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda:<i>, mig (one MIG slice per instance), mig:<gpu>:<k> or MIG-<uuid>; "
        "several, comma-separated, are given to the instances in turn (default: cpu)",
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:50050", help="Envoy's gRPC listener (default: %(default)s)"
    )
    parser.add_argument(
        "--http-listen",
        default="127.0.0.1:50051",
        help="Envoy's HTTP listener (default: %(default)s)",
    )
    parser.add_argument(
        "--admin-listen",
        default="127.0.0.1:50052",
        help="Envoy's admin interface (default: %(default)s)",
    )
    parser.add_argument(
        "--base-port",
        type=int,
        default=DEFAULT_BASE_PORT,
        help="instance k serves HTTP on base+10k, gRPC base+10k+1, metrics base+10k+2 "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="an .onnx file (labels.txt beside it) or a folder with one .onnx and labels.txt "
        "(default: the bundled model)",
    )
    parser.add_argument("--labels", type=Path, help="labels file, one class a line")
    parser.add_argument(
        "--model-name", default=DEFAULT_MODEL_NAME, help="name served (default: %(default)s)"
    )
    parser.add_argument(
        "--lb-policy",
        choices=sorted(envoy_config.LB_POLICIES),
        default="round_robin",
        help="Envoy's load balancing (default: %(default)s)",
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=32, help="dynamic batching limit (default: 32)"
    )
    parser.add_argument(
        "--no-dynamic-batching", action="store_true", help="serve each request on its own"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="ONNX Runtime threads per instance (default: 1)",
    )
    parser.add_argument(
        "--wires",
        type=_wires,
        default=",".join(WIRES),
        metavar="LIST",
        help="the inputs each instance offers, of fp32 (always), uint8 and jpeg: each variant is "
        "one more Python-backend process per instance, about 110 MB (default: %(default)s)",
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        metavar="PEM",
        help="Envoy terminates TLS with this certificate (chain) on its gRPC and HTTP listeners "
        "(with --tls-key); clients then use --url https://HOST:PORT",
    )
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    parser.add_argument("--no-envoy", action="store_true", help="start only the Triton instances")
    parser.add_argument(
        "--no-restart",
        action="store_true",
        help="leave a Triton or Envoy that dies down (default: restart it, with back-off)",
    )
    parser.add_argument(
        "--autoscale",
        metavar="MIN:MAX",
        help="hold the latency budget by adding and removing instances between MIN and MAX "
        "(MAX left out: one per core for CPU instances, one per --device entry for GPUs)",
    )
    parser.add_argument(
        "--budget-ms",
        type=float,
        default=DEFAULT_BUDGET_MS,
        help="with --autoscale: the latency budget (default: %(default)g ms)",
    )
    parser.add_argument(
        "--percentile",
        type=int,
        default=DEFAULT_PERCENTILE,
        help="with --autoscale: the latency percentile judged against the budget "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the repository, envoy.yaml and logs here (default: a temporary folder, "
        "removed on exit)",
    )
    parser.add_argument(
        "--print-config",
        metavar="DIR",
        type=Path,
        help="write the repositories, envoy.yaml and per-instance commands to DIR; start nothing",
    )
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default="local",
        help="with --print-config: local (scripts, docker run lines), compose or k8s",
    )


def _wires(text: str) -> tuple[str, ...]:
    wires = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    problem = wires_problem(wires)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"'{text}' (comma-separated): {problem}")
    return wires


def _devices(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def settings_from_args(args: argparse.Namespace) -> StackSettings:
    return StackSettings(
        instances=args.instances,
        listen=args.listen,
        http_listen=args.http_listen,
        admin_listen=args.admin_listen,
        base_port=args.base_port,
        devices=_devices(args.device),
        model=args.model,
        labels=args.labels,
        model_name=args.model_name,
        with_envoy=not args.no_envoy,
        workdir=args.workdir,
        lb_policy=args.lb_policy,
        max_batch_size=args.max_batch_size,
        dynamic_batching=not args.no_dynamic_batching,
        intra_op_threads=args.threads,
        wires=args.wires,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        restart=not args.no_restart,
    )


def tls_problem(args: argparse.Namespace) -> str | None:
    """Why `--tls-cert/--tls-key` cannot be used, or None."""
    cert, key = args.tls_cert, args.tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        return "TLS needs both --tls-cert and --tls-key"
    if args.no_envoy:
        return "--tls-cert/--tls-key are Envoy's: they cannot be used with --no-envoy"
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        try:
            text = Path(path).read_bytes()
        except OSError as error:
            return f"{flag} {path}: cannot read it ({error.strerror or error})"
        if b"-----BEGIN" not in text:
            return f"{flag} {path}: not a PEM file (no '-----BEGIN' line)"
    return None


def autoscale_limits(text: str, devices: tuple[str, ...]) -> tuple[int, int]:
    """(minimum, maximum) from `MIN:MAX`; MAX left out is what the machine holds: one CPU
    instance per core, or one instance per GPU device named. ValueError with a sentence."""
    match = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d*))?\s*", text)
    if not match:
        raise ValueError(f"--autoscale takes MIN:MAX instances (e.g. 1:4, or 1:), not {text!r}")
    minimum = int(match.group(1))
    if match.group(2):
        maximum = int(match.group(2))
    elif all(device == "cpu" for device in devices):
        maximum = max(os.cpu_count() or 1, minimum)
    else:
        maximum = max(len(resolve_devices(devices)), minimum)
    if minimum < 1 or maximum < minimum:
        raise ValueError(f"--autoscale {text}: MIN must be at least 1 and MAX not below MIN")
    return minimum, maximum


def run_serve(
    args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    if args.instances < 1:
        print(f"flowerdemo serve: --instances must be 1 or more, got {args.instances}", file=err)
        return 2
    problem = tls_problem(args)
    if problem is not None:
        print(f"flowerdemo serve: {problem}", file=err)
        return 2
    for option, folder in (("--workdir", args.workdir), ("--print-config", args.print_config)):
        problem = output_dir_problem(option, Path(folder)) if folder is not None else None
        if problem is not None:
            print(f"flowerdemo serve: {problem}", file=err)
            return 2
    autoscale: AutoscalePolicy | None = None
    if args.autoscale is not None and args.print_config is None:
        try:
            if args.no_envoy:
                raise ValueError("--autoscale reads Envoy's request times: drop --no-envoy")
            minimum, maximum = autoscale_limits(args.autoscale, _devices(args.device))
            if not minimum <= args.instances <= maximum:
                args.instances = min(max(args.instances, minimum), maximum)
            autoscale = AutoscalePolicy(
                minimum=minimum,
                maximum=maximum,
                budget_s=args.budget_ms / 1000.0,
                percentile=args.percentile,
            )
        except (ValueError, DeviceError) as error:
            print(f"flowerdemo serve: {error}", file=err)
            return 2
    if args.print_config is not None:
        try:
            written = write_print_config(args, Path(args.print_config), target=args.target)
        except (StackError, RepositoryError, DeviceError, envoy_config.EnvoyConfigError) as error:
            print(f"flowerdemo serve: {error}", file=err)
            return 1
        for path in written:
            print(path, file=out)
        return 0
    return _run_foreground(settings_from_args(args), out, err, autoscale)


# ----- the foreground stack --------------------------------------------------------------------


class _Shutdown(Exception):
    """Raised from the SIGTERM handler so the stack is stopped on the way out."""


def _raise_shutdown(signum: int, frame: FrameType | None) -> None:
    raise _Shutdown(signal.Signals(signum).name)


def format_states(states: list[InstanceState]) -> str:
    lines = [
        f"{'instance':<12}{'state':<10}{'pid':>8}  {'gRPC':>6} {'HTTP':>6}  {'device':<8} "
        f"{'restarts':>8}  note"
    ]
    for state in states:
        pid = str(state.pid) if state.pid is not None else "-"
        lines.append(
            f"{state.name:<12}{state.state:<10}{pid:>8}  {state.grpc_port:>6} "
            f"{state.http_port:>6}  {state.device:<8} {state.restarts:>8}  {state.message}"
        )
    return "\n".join(lines)


def format_event(event: StackEvent) -> str:
    """One line per event: `triton-1    down      exited unexpectedly ...`."""
    who = event.instance or ("envoy" if event.kind.startswith("envoy") else "stack")
    kind = event.kind.removeprefix("envoy_")
    return f"{who:<12}{kind:<11}{clean_server_text(event.message)}"


def _read_commands(commands: queue.Queue[str], stream: TextIO) -> None:
    # When standard input closes (a service manager, a pipe) the stack keeps serving.
    for line in stream:
        commands.put(line.strip())


def _run_foreground(
    settings: StackSettings,
    out: TextIO,
    err: TextIO,
    autoscale: AutoscalePolicy | None = None,
) -> int:
    try:
        stack = LocalStack(settings)
    except StackError as error:
        print(f"flowerdemo serve: {error}", file=err)
        return 1
    previous_handler: Callable[[int, FrameType | None], object] | int | None = None
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        previous_handler = signal.signal(signal.SIGTERM, _raise_shutdown)
    printing = threading.Lock()

    def say(text: str, stream: TextIO = out) -> None:
        with printing:
            print(text, file=stream, flush=True)

    try:
        print(
            f"Starting {settings.instances} Triton instance(s)"
            + (" behind Envoy..." if settings.with_envoy else "..."),
            file=out,
            flush=True,
        )
        try:
            stack.start()
        except StackError as error:
            print(f"flowerdemo serve: {error}", file=err)
            return 1
        stack.add_listener(lambda event: say(format_event(event)))
        print(format_states(stack.states()), file=out)
        print(
            f"\nServing model '{settings.model_name}' on gRPC {stack.grpc_url}, "
            f"HTTP {stack.http_url}."
            + (f" Envoy admin: {stack.admin_url}" if settings.with_envoy else ""),
            file=out,
        )
        print(f"Work folder: {stack.workdir} (repository, envoy.yaml, logs)", file=out)
        client_url = f"https://{stack.grpc_url}" if settings.tls_cert else stack.grpc_url
        trust = " --root-certificates CA.pem" if settings.tls_cert else ""
        print(f"Client:     flowerdemo --url {client_url}{trust}", file=out)
        print(f"Headless:   flowerdemo --url {client_url}{trust} --headless --mode auto", file=out)
        if autoscale is not None:
            print(
                f"Autoscale:  {autoscale.minimum} to {autoscale.maximum} instances, "
                f"p{autoscale.percentile} of Envoy's upstream request time against "
                f"{autoscale.budget_s * 1000:g} ms",
                file=out,
            )
        print(f"Commands:   {COMMANDS}   (Ctrl-C stops)", file=out)
        out.flush()
        _control_loop(stack, say, autoscale)
        return 0
    except (KeyboardInterrupt, _Shutdown):
        return 0
    finally:
        if in_main_thread:
            # A second SIGTERM must not cut the clean-up short.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("Stopping the stack...", file=out, flush=True)
        stack.stop()
        if in_main_thread and previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


COMMANDS = "add | remove [NAME] | kill NAME | restart NAME | scale N | status | quit"


class _Autoscaler:
    """Feeds the controller the p90 (or the policy's percentile) of Envoy's upstream request
    time over the last few seconds, and applies its decisions to the stack."""

    def __init__(self, stack: LocalStack, policy: AutoscalePolicy) -> None:
        self.stack = stack
        self.controller = AutoscaleController(policy)
        self.window = RequestTimeWindow(
            stack.settings.admin_listen, percentile=policy.percentile, span_s=3.0
        )

    def step(self) -> ScaleDecision | None:
        try:
            latency_s, _ = self.window.read(timeout_s=1.0)
        except AdminError:
            latency_s = None
        ready = sum(1 for s in self.stack.states() if s.state == "ready")
        decision = self.controller.observe(
            time.monotonic(), latency_s, ready, target_instances=self.stack.target_instances
        )
        if decision is not None:
            self.stack.scale_to(decision.target)
        return decision


def _control_loop(
    stack: LocalStack, say: Callable[..., None], autoscale: AutoscalePolicy | None = None
) -> None:
    commands: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(
        target=_read_commands, args=(commands, sys.stdin), daemon=True, name="serve-stdin"
    )
    reader.start()
    scaler = _Autoscaler(stack, autoscale) if autoscale is not None else None
    next_step = time.monotonic() + 1.0
    while True:
        try:
            command = commands.get(timeout=0.25)
        except queue.Empty:
            command = ""
        if command and _handle_command(stack, command, say):
            return
        if scaler is not None and time.monotonic() >= next_step:
            next_step = time.monotonic() + 1.0
            decision = scaler.step()
            if decision is not None:
                say(
                    f"{'autoscale':<12}{f'{decision.before}->{decision.target}':<10}{decision.reason}"
                )


def _instance_name(word: str) -> str:
    return f"triton-{word}" if word.isdigit() else word


def _handle_command(stack: LocalStack, command: str, say: Callable[..., None]) -> bool:
    """Run one typed command; True means quit."""
    words = command.split()
    verb = words[0].lower()
    arguments = words[1:]
    if verb in ("quit", "exit", "q"):
        return True
    try:
        if verb == "status" and not arguments:
            say(format_states(stack.states()))
            if stack.settings.with_envoy:
                hosts = stack.upstream_hosts()
                seen = ", ".join(
                    f"{h.instance} "
                    + ("healthy" if h.healthy else "/".join((*h.health_flags, h.eds_status)))
                    + f" (calls {h.rq_total}, open {h.rq_active})"
                    for h in hosts
                    if h.cluster == "triton_grpc"
                )
                say(f"Envoy ({stack.envoy_state}) sees: {seen or 'nothing'}")
            say(f"Target: {stack.target_instances} instance(s)")
            return False
        if verb == "add" and not arguments:
            say(f"{'stack':<12}{'adding':<10}{stack.add_instance()}")
            return False
        if verb == "remove" and len(arguments) <= 1:
            name = stack.remove_instance(_instance_name(arguments[0]) if arguments else None)
            say(f"{'stack':<12}{'removing':<10}{name} (drained first)")
            return False
        if verb == "kill" and len(arguments) == 1:
            stack.kill_instance(_instance_name(arguments[0]))
            return False
        if verb == "restart" and len(arguments) == 1:
            stack.restart_instance(_instance_name(arguments[0]))
            return False
        if verb == "scale" and len(arguments) == 1 and arguments[0].isdigit():
            stack.scale_to(int(arguments[0]))
            return False
    except StackError as error:
        say(f"{command}: {error}", sys.stderr)
        return False
    say(f"unknown command {clean_server_text(command)!r}: {COMMANDS}", sys.stderr)
    return False


# ----- --print-config --------------------------------------------------------------------------


def _print_config_devices(devices: tuple[str, ...], count: int) -> tuple[str, ...]:
    """For files, "mig" means slice k of GPU 0 for instance k (Docker's device=0:k)."""
    expanded: list[str] = []
    for device in devices:
        if device == "mig":
            expanded.extend(f"mig:0:{k}" for k in range(count))
        else:
            expanded.append(device)
    return tuple(expanded)


def _local_device(device: str) -> tuple[str, str]:
    """(value for CUDA_VISIBLE_DEVICES-resolving, note) for the local script."""
    if device.startswith("mig:"):
        try:
            return resolve_devices((device,))[0], ""
        except DeviceError:
            _, gpu, index = device.split(":")
            return (
                f"MIG-<uuid of GPU {gpu} slice {index}>",
                f"# replace the placeholder with slice {index}'s UUID from nvidia-smi -L",
            )
    return device, ""


def write_print_config(
    args: argparse.Namespace, dest: Path, *, target: str = "local"
) -> list[Path]:
    """Write everything needed to run the stack elsewhere; return the files written."""
    settings = settings_from_args(args)
    dest = dest.resolve()
    devices = _print_config_devices(settings.devices, settings.instances)
    try:
        resolve_devices(tuple(d for d in devices if not d.startswith("mig")))
    except DeviceError as error:
        raise StackError(str(error)) from error
    instances = plan_instances(settings.instances, devices, settings.base_port, settings.host)
    onnx_path, labels_path = resolve_model(settings)
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    uses_gpu = any(i.uses_gpu for i in instances)
    base_options = RepositoryOptions(
        model_name=settings.model_name,
        max_batch_size=settings.max_batch_size,
        dynamic_batching=settings.dynamic_batching,
        intra_op_threads=settings.intra_op_threads,
        wires=settings.wires,
    )
    local_kind = "gpu" if uses_gpu else "cpu"
    local_repo = write_repository(
        onnx_path,
        labels_path,
        dest / "repository",
        _with_kind(base_options, local_kind),
        flavour="python",
    )
    # NVIDIA's containers run ONNX and TensorRT natively; each container sees one GPU or slice.
    onnx_repo = write_repository(
        onnx_path,
        labels_path,
        dest / "repository-onnx",
        _with_kind(base_options, local_kind),
        flavour="onnx",
    )
    trt_repo = write_repository(
        onnx_path,
        labels_path,
        dest / "repository-tensorrt",
        _with_kind(base_options, "gpu"),
        flavour="tensorrt",
        trtexec="/usr/src/tensorrt/bin/trtexec",
    )
    written += [local_repo.model_dir, onnx_repo.model_dir, trt_repo.model_dir]

    envoy_settings = envoy_settings_for(settings, instances)
    envoy_path = envoy_config.write_config(envoy_settings, dest / "envoy.yaml")
    written.append(envoy_path)

    plan = DeploymentPlan(
        model_name=settings.model_name,
        repository=onnx_repo.root,
        envoy_config=envoy_path,
        instances=instances,
        listen=settings.listen,
        http_listen=settings.http_listen,
        admin_listen=settings.admin_listen,
        repository_flavour="onnx",
    )
    if target == "local":
        written.append(_write_local_script(dest, plan, local_repo.root))
        written.append(_write_container_script(dest, plan, trt_repo.build_command))
    else:
        tls_files = (
            (Path(settings.tls_cert), Path(settings.tls_key))
            if settings.tls_cert and settings.tls_key
            else None
        )
        written += _write_deployment(dest, plan, target, tls_files)
    return written


def _with_kind(options: RepositoryOptions, kind: str) -> RepositoryOptions:
    return replace(options, instance_kind=kind, gpus=(0,))


def _write_local_script(dest: Path, plan: DeploymentPlan, repository: Path) -> Path:
    lines = [
        "#!/bin/sh",
        "# The local stack by hand: the tritonserver bundled with nvidia-pytriton, then Envoy.",
        "# Generated by 'flowerdemo serve --print-config'; 'flowerdemo serve' does the same and",
        "# also waits for readiness and cleans up.",
    ]
    try:
        install = find_triton()
    except TritonNotFound as error:
        lines.append(f"# tritonserver not found here ({error}); install flowerdemo[serve].")
        install = None
    if install is not None:
        backend_dir = prepare_backend_dir(install, dest / "backends")
        library_path = [sysconfig.get_config_var("LIBDIR") or "", str(install.libs_dir)]
        lines += [
            "# The Python-backend stub must load this interpreter's libpython and find numpy<2",
            "# and onnxruntime through the python3 first on PATH.",
            "export LD_LIBRARY_PATH="
            + shlex.quote(os.pathsep.join(p for p in library_path if p))
            + '"${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"',
            f'export PATH={shlex.quote(str(interpreter_bin_dir()))}:"$PATH"',
            "export OMP_NUM_THREADS=1",
        ]
        for instance in plan.instances:
            device, note = _local_device(instance.device)
            tmp_dir = dest / "tmp" / instance.name
            command = triton_command(
                install,
                repository=repository,
                backend_dir=backend_dir,
                host=instance.host,
                http_port=instance.http_port,
                grpc_port=instance.grpc_port,
                metrics_port=instance.metrics_port,
                shm_region_prefix=shm_prefix("manual", instance.index),
                gpu=instance.uses_gpu,
            )
            visible = "" if device == "cpu" else device.removeprefix("cuda:")
            lines.append(f"# {instance.name} on {instance.device}")
            if note:
                lines.append(note)
            lines.append(f"mkdir -p {shlex.quote(str(tmp_dir))}")
            lines.append(
                f"TMPDIR={shlex.quote(str(tmp_dir))} CUDA_VISIBLE_DEVICES={shlex.quote(visible)} "
                + shlex.join(command)
                + " &"
            )
    try:
        envoy_cmd = envoy_config.envoy_command(plan.envoy_config)
    except envoy_config.EnvoyNotFound:
        envoy_cmd = ["envoy", "-c", str(plan.envoy_config), "--concurrency", "1"]
        envoy_cmd.append("--disable-hot-restart")
    lines += [
        "# Envoy, once the instances answer /v2/health/ready",
        shlex.join(envoy_cmd) + " &",
        "wait",
    ]
    path = dest / "run-local.sh"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o755)
    return path


def _write_container_script(
    dest: Path, plan: DeploymentPlan, build_command: tuple[str, ...]
) -> Path:
    repository = plan.repository.resolve()
    lines = [
        "#!/bin/sh",
        "# NVIDIA's Triton container, one per device (a MIG slice is --gpus '\"device=0:k\"'),",
        "# host networking, the onnxruntime_onnx repository; then Envoy in front.",
        "# Generated by 'flowerdemo serve --print-config'.",
    ]
    for instance in plan.instances:
        gpus = docker_gpus_value(instance.device, instance.index)
        command = container_command(
            image=plan.triton_image,
            repository=repository,
            http_port=instance.http_port,
            grpc_port=instance.grpc_port,
            metrics_port=instance.metrics_port,
            docker_gpus=gpus,
            name=f"flowerdemo-{instance.name}",
        )
        lines += [f"# {instance.name} on {instance.device}", shlex.join(command) + " &"]
    envoy_path = plan.envoy_config.resolve()
    lines += [
        "# Envoy in front (same envoy.yaml: the instances listen on this host's loopback)",
        shlex.join(
            [
                "docker",
                "run",
                "--rm",
                "--name",
                "flowerdemo-envoy",
                "--network",
                "host",
                "-v",
                f"{envoy_path}:/etc/envoy/envoy.yaml:ro",
                plan.envoy_image,
                "envoy",
                "-c",
                "/etc/envoy/envoy.yaml",
                "--concurrency",
                "1",
                "--disable-hot-restart",
            ]
        )
        + " &",
        "wait",
        "",
        "# For TensorRT instead of ONNX Runtime: build the engine once per GPU model, inside the",
        "# TensorRT container of the same release, then mount repository-tensorrt instead:",
    ]
    if build_command:
        trt_root = (dest / "repository-tensorrt").resolve()
        inside = [part.replace(str(trt_root), "/models") for part in build_command]
        docker_build = [
            "docker",
            "run",
            "--rm",
            "--gpus",
            '"device=0"',
            "-v",
            f"{trt_root}:/models",
            plan.triton_image.replace("tritonserver", "tensorrt"),
            *inside,
        ]
        lines.append("# " + shlex.join(docker_build))
    path = dest / "run-containers.sh"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o755)
    return path


def _write_deployment(
    dest: Path, plan: DeploymentPlan, target: str, tls_files: tuple[Path, Path] | None = None
) -> list[Path]:
    if importlib.util.find_spec("flowerdemo.serving.deploy") is None:
        raise StackError(
            f"--target {target}: the compose/Kubernetes writer (flowerdemo.serving.deploy) is "
            "not part of this installation"
        )
    deploy = importlib.import_module("flowerdemo.serving.deploy")
    if target == "compose":
        result = deploy.write_compose(dest, plan, tls_files=tls_files)
    else:
        # The certificate reaches the pods as a TLS Secret, created apart from these files.
        result = deploy.write_kubernetes(dest, plan, tls=tls_files is not None)
    if isinstance(result, (list, tuple)):
        return [Path(p) for p in result]
    if result is not None:
        return [Path(result)]
    return [dest]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flowerdemo serve",
        description="Run N Triton instances behind Envoy on this machine, or write their "
        "configuration.",
    )
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
