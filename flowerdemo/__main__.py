"""`flowerdemo`: the window (default), `--headless` runs, `flowerdemo serve` and `flowerdemo bench`."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from flowerdemo import __version__
from flowerdemo.validation import CommandLineParser

SUBCOMMANDS = ("serve", "bench")


def _client_parser() -> CommandLineParser:
    from flowerdemo.env_settings import describe
    from flowerdemo.options import add_client_arguments

    parser = CommandLineParser(
        prog="flowerdemo",
        description="Classify flower photos live through Triton Inference Server behind Envoy. "
        "Other commands: 'flowerdemo serve' runs the local stack, 'flowerdemo bench' sweeps "
        "concurrency (each has its own --help).",
    )
    parser.add_argument("--version", action="version", version=f"flowerdemo {__version__}")
    add_client_arguments(parser)
    parser.epilog = describe(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Every entry point runs guarded: SIGTERM takes Ctrl+C's clean path, and anything
    unexpected becomes a short message with the path of a log file (exit codes: flowerdemo.guard)."""
    from flowerdemo.guard import guarded, sigterm_as_sigint

    arguments = list(sys.argv[1:] if argv is None else argv)
    program = (
        f"flowerdemo {arguments[0]}" if arguments and arguments[0] in SUBCOMMANDS else "flowerdemo"
    )
    with sigterm_as_sigint():
        return guarded(program, lambda: _dispatch(arguments))


def _dispatch(arguments: list[str]) -> int:
    if arguments and arguments[0] == "serve":
        from flowerdemo.serving.cli import add_serve_arguments, run_serve

        parser = CommandLineParser(
            prog="flowerdemo serve",
            description="Run N Triton instances behind Envoy on this machine, or write their configuration.",
        )
        add_serve_arguments(parser)
        return run_serve(parser.parse_args(arguments[1:]))
    if arguments and arguments[0] == "bench":
        from flowerdemo.bench import add_bench_arguments, run_bench

        parser = CommandLineParser(
            prog="flowerdemo bench",
            description="Sweep concurrency against a server: throughput and latency per step, "
            "CSV in perf_analyzer's layout, PNG plots.",
        )
        add_bench_arguments(parser)
        return run_bench(parser.parse_args(arguments[1:]))

    from flowerdemo.env_settings import apply_environment
    from flowerdemo.options import options_from_args, validate_options

    parser = _client_parser()
    apply_environment(parser, os.environ)
    options = options_from_args(parser.parse_args(arguments))
    problems = validate_options(options)
    if problems:
        parser.error("; ".join(problems))
    if options.headless:
        from flowerdemo.headless import run_headless

        return run_headless(options)
    # Before Qt loads: a missing system library or display is explained, not left to Qt's abort.
    from flowerdemo.display_check import prepare_display
    from flowerdemo.guard import EXIT_NOT_RUN

    if not prepare_display():
        return EXIT_NOT_RUN
    from flowerdemo.ui.app import run_app

    return run_app(options)


if __name__ == "__main__":
    sys.exit(main())
