"""The one record every request ends as: answered with its top-k, or failed with a reason."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

INSTANCE_HEADER = "x-flowerdemo-instance"
"""The response header our Envoy adds to every answer: the name of the Triton instance that served it."""
UNKNOWN_INSTANCE = "unknown"
"""The instance of an answer that carried no INSTANCE_HEADER (a server not behind our Envoy)."""


class ErrorKind(str, Enum):
    UNAVAILABLE = "unavailable"
    """No connection: the server or the load balancer is down or unreachable."""
    DEADLINE = "deadline"
    """No answer within the request's deadline."""
    SERVER = "server"
    """The server answered with an error (model failed, bad request, overloaded)."""
    RESPONSE = "response"
    """The answer could not be read as the classification we asked for."""
    CANCELLED = "cancelled"
    """Still outstanding when the client was shut down."""


@dataclass(frozen=True)
class RequestError:
    kind: ErrorKind
    message: str

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.message}"


@dataclass(frozen=True)
class Classification:
    score: float
    index: int
    label: str


@dataclass(frozen=True)
class InferenceEvent:
    """One finished request. Times are time.monotonic() seconds."""

    request_id: int
    image_indices: tuple[int, ...]
    sent_at: float
    done_at: float
    topk: tuple[tuple[Classification, ...], ...] = ()
    """Per image of the request, best first; empty when the request failed."""
    error: RequestError | None = None
    instance: str = UNKNOWN_INSTANCE
    """The instance that answered, as the load balancer named it (cleaned server text)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def latency_s(self) -> float:
        return self.done_at - self.sent_at

    @property
    def batch_size(self) -> int:
        return len(self.image_indices)
