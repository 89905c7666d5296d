"""qasync's decorators with their signatures kept (qasync ships without type annotations)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import qasync

SlotFunction = TypeVar("SlotFunction", bound=Callable[..., Any])


def async_slot(*types: type) -> Callable[[SlotFunction], SlotFunction]:
    """A Qt slot that runs a coroutine as a task on the qasync loop (qasync.asyncSlot)."""
    return cast(Callable[[SlotFunction], SlotFunction], qasync.asyncSlot(*types))
