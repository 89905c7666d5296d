"""The embedded default: with no --url, a local stack is started for the run and stopped after it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TextIO

from flowerdemo.options import RunOptions


@contextlib.contextmanager
def server_url(options: RunOptions, err: TextIO) -> Iterator[str | None]:
    """The URL to use: --url as given, or the local stack's (None, after a message, if it fails)."""
    if options.url is not None:
        yield options.url
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
    print(
        f"Starting the local stack: {options.instances} Triton instance(s) behind Envoy...",
        file=err,
    )
    stack = LocalStack(StackSettings(instances=options.instances))
    try:
        stack.start()
    except StackError as error:
        print(f"flowerdemo: the local stack did not start: {error}", file=err)
        yield None
        return
    try:
        yield stack.grpc_url if options.protocol == "grpc" else stack.http_url
    finally:
        stack.stop()
