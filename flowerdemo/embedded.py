"""The embedded default: with no --url, a local stack is started for the run and stopped after it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from flowerdemo.options import RunOptions

if TYPE_CHECKING:
    from flowerdemo.serving.stack import LocalStack


@dataclass(frozen=True)
class ServerTarget:
    """Where the run sends its requests, and the stack behind it when this run started it."""

    url: str
    stack: LocalStack | None = None


@contextlib.contextmanager
def serving_target(
    options: RunOptions, err: TextIO, stack_settings: Any = None
) -> Iterator[ServerTarget | None]:
    """--url as given, or a local stack started for the run (None, after a message, if it
    fails). `stack_settings` (serving.stack.StackSettings) overrides the stack's defaults: tests
    and benchmarks put it on free ports. With --autoscale the stack starts within its limits."""
    if options.url is not None:
        yield ServerTarget(options.url)
        return
    try:
        from flowerdemo.serving.stack import LocalStack, StackError, StackSettings
    except ImportError as error:
        print(
            f"flowerdemo: no --url given and the local stack cannot start ({error}). "
            "Install it with: pip install 'flowerdemo[serve]', or pass --url HOST:PORT.",
            file=err,
        )
        yield None
        return
    instances = options.instances
    limits = options.autoscale_limits()
    if limits is not None:
        instances = min(max(instances, limits[0]), limits[1])
    settings = (
        stack_settings if stack_settings is not None else StackSettings(wires=options.local_wires())
    )
    settings = _with_instances(settings, instances)
    print(f"Starting the local stack: {instances} Triton instance(s) behind Envoy...", file=err)
    stack = LocalStack(settings)
    try:
        stack.start()
    except StackError as error:
        print(f"flowerdemo: the local stack did not start: {error}", file=err)
        yield None
        return
    except BaseException:
        # Ctrl+C or SIGTERM while the servers start: stop what already runs.
        stack.stop()
        raise
    try:
        url = stack.grpc_url if options.protocol == "grpc" else stack.http_url
        yield ServerTarget(url, stack)
    finally:
        stack.stop()


@contextlib.contextmanager
def server_url(options: RunOptions, err: TextIO) -> Iterator[str | None]:
    """The URL to use: --url as given, or the local stack's (None, after a message, if it fails)."""
    with serving_target(options, err) as target:
        yield None if target is None else target.url


def _with_instances(settings: Any, instances: int) -> Any:
    from dataclasses import replace

    return replace(settings, instances=instances)
