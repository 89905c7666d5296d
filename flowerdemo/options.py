"""The client's command line, shared by the window and the headless runner."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from flowerdemo.core.engine import (
    PROTOCOLS,
    ConnectError,
    EngineSettings,
    TlsOptions,
    TransportName,
    check_url,
)
from flowerdemo.core.images import read_labels
from flowerdemo.core.model_spec import WIRE_CHOICES, WireChoice
from flowerdemo.core.preprocess import (
    RESIZE_MODES,
    SCALINGS,
    PreprocessOptions,
    ResizeMode,
    Scaling,
)
from flowerdemo.core.stats import DEFAULT_PERCENTILE
from flowerdemo.core.transport import GRPC_CALLS, GrpcCalls
from flowerdemo.resources import labels_file, sample_images_dir
from flowerdemo.validation import (
    MAX_BATCH_SIZE,
    MAX_CONCURRENCY,
    MAX_INSTANCES,
    MAX_TOPK,
    finite_positive,
    int_between,
    labels_problem,
    number_problem,
    output_file_problem,
)

Mode = Literal["interactive", "auto"]
DEFAULT_BUDGET_MS = 50.0
DEFAULT_LOCAL_INSTANCES = 2
DEFAULT_IDLE_MINUTES = 3.0


@dataclass(frozen=True)
class RunOptions:
    url: str | None
    """None: start the embedded local stack and connect to it."""
    protocol: TransportName = "grpc"
    grpc_calls: GrpcCalls = "unary"
    model: str = "flowers"
    model_version: str = ""
    mode: Mode = "interactive"
    concurrency: int = 8
    topk: int = 3
    batch_size: int = 1
    duration_s: float | None = None
    report: Path | None = None
    images: Path | None = None
    labels: Path | None = None
    scaling: Scaling | None = None
    """None: the scaling the model states (raw pixels for UINT8 and JPEG inputs)."""
    wire: WireChoice = "fp32"
    resize: ResizeMode = "crop"
    timeout_s: float = 10.0
    budget_ms: float = DEFAULT_BUDGET_MS
    percentile: int = DEFAULT_PERCENTILE
    """The verdict percentile: the latency the budget, the badge and the summary judge by."""
    instances: int = DEFAULT_LOCAL_INSTANCES
    request_rate: float | None = None
    """Open loop: send this many requests per second in auto mode instead of keeping
    `concurrency` outstanding."""
    poisson: bool = False
    """Open loop with exponential gaps between requests (a Poisson process)."""
    autoscale: str | None = None
    """`MIN:MAX` (or `MIN:`): hold the budget by scaling the embedded stack (see autoscale_limits)."""
    server_urls: tuple[str, ...] = ()
    """HOST:PORT of each instance behind a remote balancer, for the servers' own timing split."""
    admin: str | None = None
    """HOST:PORT of the Envoy admin interface of a remote stack: its instances in the window."""
    fullscreen: bool = False
    headless: bool = False
    kiosk: bool = False
    """Unattended booth: full screen, no quitting by key, automatic mode after `idle_minutes`."""
    idle_minutes: float = DEFAULT_IDLE_MINUTES
    ssl: bool = False
    """TLS to the server (also implied by https:// and by any certificate option)."""
    root_certificates: Path | None = None
    private_key: Path | None = None
    certificate_chain: Path | None = None
    headers: tuple[tuple[str, str], ...] = ()
    """`-H 'Name: value'`: sent with every call (gRPC metadata, HTTP headers)."""

    @property
    def tls(self) -> TlsOptions | None:
        """The TLS options asked for, or None for a plain connection (unless the URL says https)."""
        certificates = (self.root_certificates, self.private_key, self.certificate_chain)
        if not self.ssl and all(path is None for path in certificates):
            return None
        return TlsOptions(*certificates)

    @property
    def images_dir(self) -> Path:
        return self.images or sample_images_dir()

    def autoscale_limits(self) -> tuple[int, int] | None:
        """(minimum, maximum) instances from `--autoscale MIN:MAX`; MAX left out is the number of
        cores (one CPU instance per core). Raises ValueError with a sentence for bad text."""
        if self.autoscale is None:
            return None
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d*)\s*", self.autoscale)
        if not match:
            raise ValueError(
                f"--autoscale takes MIN:MAX instances (e.g. 1:4, or 1: for up to one per core), "
                f"not '{self.autoscale}'"
            )
        minimum = int(match.group(1))
        maximum = int(match.group(2)) if match.group(2) else max(os.cpu_count() or 1, minimum)
        if minimum < 1 or maximum < minimum:
            raise ValueError(
                f"--autoscale {self.autoscale}: MIN must be at least 1 and MAX not below MIN"
            )
        return minimum, maximum

    def local_wires(self) -> tuple[str, ...]:
        """The inputs a local stack started for this run offers: what `wire` can pick, so a
        laptop runs no Python-backend stub (one process per instance and variant) it never uses."""
        if self.wire == "auto":
            return tuple(w for w in WIRE_CHOICES if w != "auto")
        return ("fp32",) if self.wire == "fp32" else ("fp32", self.wire)

    def class_names(self) -> tuple[str, ...]:
        """Names for the client-side labels fallback and for ground truth from folder names."""
        return read_labels(self.labels or labels_file())

    def engine_settings(self, url: str) -> EngineSettings:
        return EngineSettings(
            url=url,
            protocol=self.protocol,
            grpc_calls=self.grpc_calls,
            model_name=self.model,
            model_version=self.model_version,
            topk=self.topk,
            batch_size=self.batch_size,
            request_timeout_s=self.timeout_s,
            preprocess=PreprocessOptions(scaling=self.scaling, resize=self.resize),
            fallback_labels=self.class_names(),
            wire=self.wire,
            tls=self.tls,
            headers=self.headers,
            labels_from_user=self.labels is not None,
        )


def add_grpc_calls_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--grpc-calls",
        choices=GRPC_CALLS,
        default="unary",
        help="gRPC inference as one unary call per request (default) or as messages on "
        "short-lived streams: less client, Envoy and server CPU per request, but Envoy then "
        "balances streams (renewed every second), not requests, and cannot time each request "
        "('flowerdemo serve --autoscale' judges Envoy's request times)",
    )


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help="HOST:PORT of the server or load balancer (e.g. host:50050); "
        "without it a local stack is started on 127.0.0.1 and used",
    )
    parser.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    add_grpc_calls_argument(parser)
    parser.add_argument(
        "--model", default="flowers", help="model name on the server (default: flowers)"
    )
    parser.add_argument(
        "--model-version", default="", help="model version (default: the server's latest)"
    )
    parser.add_argument("--mode", choices=("interactive", "auto"), default="interactive")
    parser.add_argument(
        "-c",
        "--concurrency",
        type=int_between(1, MAX_CONCURRENCY),
        default=8,
        help="requests kept outstanding in auto mode",
    )
    parser.add_argument(
        "--topk", type=int_between(1, MAX_TOPK), default=3, help="labels shown per photo"
    )
    parser.add_argument(
        "-b",
        "--batch-size",
        type=int_between(1, MAX_BATCH_SIZE),
        default=1,
        help="photos per request",
    )
    parser.add_argument(
        "--duration", type=finite_positive, help="seconds to run auto mode, then stop"
    )
    parser.add_argument(
        "--headless", action="store_true", help="no window: live status line and a summary"
    )
    parser.add_argument(
        "--report", type=Path, help="write the run's statistics here (.json or .csv)"
    )
    parser.add_argument(
        "--images", type=Path, help="folder of photos (default: the bundled samples)"
    )
    parser.add_argument(
        "--labels", type=Path, help="class names, one a line (default: the bundled ones)"
    )
    parser.add_argument(
        "--scaling",
        choices=SCALINGS,
        default=None,
        help="pixel scaling for a float input (default: what the model's config states, else "
        "inception; UINT8 and JPEG inputs take raw pixels, the server scales them)",
    )
    parser.add_argument(
        "--wire",
        choices=WIRE_CHOICES,
        default="fp32",
        help="how images travel: fp32 tensors (the model as named), uint8 raw pixels or jpeg "
        "bytes (the server's MODEL_uint8 / MODEL_jpeg variants), auto: the smallest offered (fp32 when "
        "--scaling asks for a scaling)",
    )
    parser.add_argument("--resize", choices=RESIZE_MODES, default="crop")
    parser.add_argument(
        "--timeout", type=finite_positive, default=10.0, help="deadline of each request, seconds"
    )
    parser.add_argument(
        "--budget-ms",
        type=finite_positive,
        default=DEFAULT_BUDGET_MS,
        help="latency budget shown on the charts",
    )
    parser.add_argument(
        "--percentile",
        type=int,
        default=DEFAULT_PERCENTILE,
        help="the latency percentile judged against the budget everywhere (default 90)",
    )
    parser.add_argument(
        "--instances",
        type=int_between(1, MAX_INSTANCES),
        default=DEFAULT_LOCAL_INSTANCES,
        help="Triton instances of the local stack (only without --url)",
    )
    parser.add_argument(
        "--request-rate",
        type=float,
        metavar="R",
        help="auto mode as an open loop: send R requests per second whatever the answers do "
        "(as perf_analyzer's --request-rate-range) instead of keeping --concurrency outstanding",
    )
    parser.add_argument(
        "--poisson",
        action="store_true",
        help="with --request-rate: exponential gaps between requests instead of a constant rate",
    )
    parser.add_argument(
        "--autoscale",
        metavar="MIN:MAX",
        help="hold the latency budget by adding and removing instances of the local stack "
        "(only without --url); MAX defaults to the number of cores",
    )
    parser.add_argument(
        "--server-url",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="an instance behind a remote balancer (repeat, or separate with commas): its own "
        "queue and compute times are read for the report (the local stack's are known)",
    )
    parser.add_argument(
        "--admin",
        metavar="HOST:PORT",
        help="Envoy admin interface of a stack this app did not start: the window's Instances "
        "panel lists its instances and their health",
    )
    add_security_arguments(parser)
    parser.add_argument("--fullscreen", action="store_true", help="open the window full screen")
    parser.add_argument(
        "--kiosk",
        action="store_true",
        help="unattended booth: full screen, Esc and Ctrl+Q do nothing (Ctrl+Alt+Shift+Q or "
        "SIGTERM ends it), idle cursor hidden, screen kept on, automatic mode when left alone",
    )
    parser.add_argument(
        "--idle-minutes",
        type=finite_positive,
        default=DEFAULT_IDLE_MINUTES,
        help="kiosk: minutes without input before automatic mode resumes (default: 3)",
    )


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    """TLS and request headers, as Triton's client examples name them (window, headless, bench)."""
    parser.add_argument(
        "--ssl",
        action="store_true",
        help="TLS to the server (also implied by --url https://... and by the certificate options)",
    )
    parser.add_argument(
        "--root-certificates",
        type=Path,
        metavar="PEM",
        help="CA certificates to trust for TLS (default: the system's)",
    )
    parser.add_argument("--private-key", type=Path, metavar="PEM", help="client key for mutual TLS")
    parser.add_argument(
        "--certificate-chain", type=Path, metavar="PEM", help="client certificate for mutual TLS"
    )
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="send this header with every call (repeatable), e.g. -H 'Authorization: Bearer T'",
    )


def security_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The RunOptions fields of add_security_arguments' options."""
    return {
        "ssl": args.ssl,
        "root_certificates": args.root_certificates,
        "private_key": args.private_key,
        "certificate_chain": args.certificate_chain,
        "headers": tuple(_split_header(text) for text in args.header),
    }


def security_problems(options: RunOptions) -> list[str]:
    """What is wrong with the TLS options and headers, one sentence each."""
    problems: list[str] = []
    for name, value in options.headers:
        problem = header_problem(name, value)
        if problem:
            problems.append(problem)
    for flag, path in (
        ("--root-certificates", options.root_certificates),
        ("--private-key", options.private_key),
        ("--certificate-chain", options.certificate_chain),
    ):
        if path is not None and not path.is_file():
            problems.append(f"{flag}: {path} is not a readable file")
    if (options.private_key is None) != (options.certificate_chain is None):
        problems.append("a client certificate needs both --private-key and --certificate-chain")
    if options.tls is not None and options.url is None:
        problems.append(
            "TLS options need --url https://HOST:PORT of a server that speaks TLS (the local "
            "stack this run would start listens in plain text on 127.0.0.1)"
        )
    if options.url is not None and options.tls is not None:
        scheme = options.url.strip().split("://", 1)[0].lower() if "://" in options.url else ""
        if scheme in ("http", "grpc"):
            problems.append(
                f"--url {options.url} asks for a plain connection but TLS options were given: "
                f"write https:// for TLS, or drop --ssl and the certificate options"
            )
    return problems


def options_from_args(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        url=args.url,
        protocol=args.protocol,
        grpc_calls=args.grpc_calls,
        model=args.model,
        model_version=args.model_version,
        mode=args.mode,
        concurrency=args.concurrency,
        topk=args.topk,
        batch_size=args.batch_size,
        duration_s=args.duration,
        report=args.report,
        images=args.images,
        labels=args.labels,
        scaling=args.scaling,
        wire=args.wire,
        resize=args.resize,
        timeout_s=args.timeout,
        budget_ms=args.budget_ms,
        percentile=args.percentile,
        instances=args.instances,
        request_rate=args.request_rate,
        poisson=args.poisson,
        autoscale=args.autoscale,
        server_urls=tuple(
            url.strip() for item in args.server_url for url in item.split(",") if url.strip()
        ),
        admin=args.admin,
        fullscreen=args.fullscreen,
        headless=args.headless,
        kiosk=args.kiosk,
        idle_minutes=args.idle_minutes,
        **security_from_args(args),
    )


_HEADER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _split_header(text: str) -> tuple[str, str]:
    """'Name: value' -> (name, value); a malformed one is kept as (text, "") and reported by
    validate_options, so every problem of the command line is told at once."""
    name, sep, value = text.partition(":")
    if not sep or not _HEADER_NAME.match(name.strip()):
        return text, ""
    return name.strip(), value.strip()


def header_problem(name: str, value: str) -> str | None:
    """Why a request header cannot be sent, or None."""
    if not _HEADER_NAME.match(name):
        return (
            f"-H '{name}': write a header as 'Name: value' (name of letters, digits, '-', '_', '.')"
        )
    if name.lower().startswith("grpc-") or name.lower() in ("te", "content-type", "host"):
        return f"-H {name}: this header is set by the protocol itself and cannot be replaced"
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        return f"-H {name}: the value contains control characters"
    return None


def validate_options(options: RunOptions) -> list[str]:
    """Problems a user can fix on the command line, one sentence each."""
    problems = value_problems(options)
    if not 1 <= options.concurrency <= 1024:
        problems.append(f"--concurrency must be between 1 and 1024, not {options.concurrency}")
    if options.topk < 1:
        problems.append(f"--topk must be at least 1, not {options.topk}")
    if options.batch_size < 1:
        problems.append(f"--batch-size must be at least 1, not {options.batch_size}")
    if not 1 <= options.percentile <= 99:
        problems.append(f"--percentile must be between 1 and 99, not {options.percentile}")
    if options.idle_minutes <= 0:
        problems.append(f"--idle-minutes must be positive, not {options.idle_minutes}")
    if options.instances < 1:
        problems.append(f"--instances must be at least 1, not {options.instances}")
    if options.request_rate is not None and not 0 < options.request_rate <= 100_000:
        problems.append(
            f"--request-rate must be above 0 and at most 100000 per second, not {options.request_rate}"
        )
    if options.request_rate is not None and not (options.headless and options.mode == "auto"):
        problems.append(
            "--request-rate paces an automatic headless run: add --headless --mode auto "
            "(or measure rates with 'flowerdemo bench --request-rate')"
        )
    if options.poisson and options.request_rate is None:
        problems.append("--poisson shapes --request-rate: give a rate too")
    try:
        limits = options.autoscale_limits()
    except ValueError as error:
        problems.append(str(error))
        limits = None
    if limits is not None and options.url is not None:
        problems.append(
            "--autoscale changes the instances of the local stack this run starts: leave out "
            "--url (a stack started with 'flowerdemo serve' scales itself with its own --autoscale)"
        )
    for url in options.server_urls:
        try:
            check_url(url)
        except ConnectError as error:
            problems.append(f"--server-url: {error}")
    problems += security_problems(options)
    if options.report is not None and options.report.suffix.lower() not in (".json", ".csv"):
        problems.append(f"--report must end in .json or .csv, not '{options.report.name}'")
    return problems


def value_problems(options: RunOptions) -> list[str]:
    """Numbers that are not finite and positive, and files that cannot be used, found before
    anything starts: an unwritable --report is refused now, not after the run."""
    problems = [
        problem
        for problem in (
            number_problem("--duration", options.duration_s),
            number_problem("--timeout", options.timeout_s),
            number_problem("--budget-ms", options.budget_ms),
            labels_problem(options.labels) if options.labels is not None else None,
        )
        if problem is not None
    ]
    if options.report is not None and options.report.suffix.lower() in (".json", ".csv"):
        problem = output_file_problem("--report", options.report)
        if problem is not None:
            problems.append(problem)
    return problems
