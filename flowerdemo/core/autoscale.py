"""Hold the latency budget by changing the number of instances: a pure controller, no I/O.

The caller observes the windowed verdict-percentile latency (p90 unless the policy says
otherwise) every second or so and applies what the controller decides (`stack.scale_to`). The
rules, in order:

1. Outside the limits: fewer ready instances than `minimum` (or more than `maximum`) gives a
   decision back to the limit at once.
2. A change is under way: after a decision, nothing more is decided until the stack reports the
   target count ready (instances take seconds to start, and the latency of the old set says
   nothing about the new one). If it never gets there within `settle_timeout_s`, the controller
   takes what is ready as the new truth and carries on.
3. Cool-down: at most one change per `cooldown_s`, counted from the moment the last change was
   reached (so the window has filled with answers from the new set).
4. Up: the latency has been over the budget in every observation for `over_for_s` seconds, and
   fewer than `maximum` instances run: one more.
5. Down: for `under_for_s` seconds every observation says one instance fewer would still fit
   well: `latency * n / (n - 1) <= down_fraction * budget`, and more than `minimum` run: one
   fewer. The estimate assumes latency grows with the load each instance carries, i.e. in
   proportion to n / (n - 1) for the same total load; that holds for a saturated closed loop
   (latency = outstanding requests / throughput, throughput proportional to instances) and
   overestimates when instances idle (their latency is service time, which one fewer instance
   barely changes), so it errs towards keeping an instance. `down_fraction` leaves room for the
   rest of its error and is the hysteresis between the two rules: a latency near the budget can
   never satisfy both.

An observation without a latency (nothing answered in the window) is no evidence either way: it
breaks both streaks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class AutoscalePolicy:
    minimum: int
    maximum: int
    budget_s: float
    percentile: int = 90
    """Which latency the caller observes (the verdict percentile); used in the reasons."""
    over_for_s: float = 3.0
    """How long the latency must stay over the budget before an instance is added."""
    cooldown_s: float = 6.0
    """The least time between one change being reached and the next decision."""
    under_for_s: float = 10.0
    """How long one fewer instance must look comfortable before one is removed."""
    down_fraction: float = 0.7
    """One fewer must be predicted at or under this share of the budget."""
    settle_timeout_s: float = 60.0
    """How long a decision may wait for the stack to report its target ready."""

    def __post_init__(self) -> None:
        problems = []
        if self.minimum < 1:
            problems.append(f"the minimum must be at least 1 instance, not {self.minimum}")
        if self.maximum < self.minimum:
            problems.append(
                f"the maximum ({self.maximum}) must not be below the minimum ({self.minimum})"
            )
        if not self.budget_s > 0:
            problems.append(f"the budget must be positive, not {self.budget_s} s")
        if not 0 < self.percentile < 100:
            problems.append(f"the percentile must be between 1 and 99, not {self.percentile}")
        if not 0 < self.down_fraction < 1:
            problems.append(f"down_fraction must be between 0 and 1, not {self.down_fraction}")
        for name in ("over_for_s", "cooldown_s", "under_for_s", "settle_timeout_s"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class ScaleDecision:
    """Change from `before` to `target` instances, decided at `at` (the caller's clock)."""

    at: float
    before: int
    target: int
    reason: str


class AutoscaleController:
    """Feed it observations in time order; apply each decision it returns."""

    def __init__(self, policy: AutoscalePolicy) -> None:
        self.policy = policy
        self._pending: ScaleDecision | None = None
        self._settled_at = -math.inf
        self._over_since: float | None = None
        self._under_since: float | None = None
        self.decisions: list[ScaleDecision] = []
        """Every decision made, oldest first."""

    @property
    def pending(self) -> ScaleDecision | None:
        """The decision the stack has not reached yet."""
        return self._pending

    def observe(
        self,
        now: float,
        latency_s: float | None,
        ready_instances: int,
        *,
        target_instances: int | None = None,
    ) -> ScaleDecision | None:
        """One observation: the windowed latency (None: nothing answered) and the ready count.

        `target_instances`, when the caller knows it, is the count the stack is heading for: while
        it differs from the ready count (an instance starting, or restarting after a crash) the
        stack is still converging and nothing is decided, and the limits are checked on it."""
        policy = self.policy
        if latency_s is not None and math.isnan(latency_s):
            latency_s = None
        self._update_streaks(now, latency_s, ready_instances)

        if self._pending is not None:
            if ready_instances == self._pending.target:
                self._settle(now)
            elif now - self._pending.at >= policy.settle_timeout_s:
                self._settle(now)  # the stack did not get there: carry on from what is ready
            else:
                return None

        heading_for = ready_instances if target_instances is None else target_instances
        if heading_for < policy.minimum:
            return self._decide(
                now,
                heading_for,
                policy.minimum,
                f"{_count(heading_for)}, below the minimum of {policy.minimum}: "
                f"starting {_count(policy.minimum - heading_for, 'more')}.",
            )
        if heading_for > policy.maximum:
            return self._decide(
                now,
                heading_for,
                policy.maximum,
                f"{_count(heading_for)}, above the maximum of {policy.maximum}: "
                f"stopping {_count(heading_for - policy.maximum)}.",
            )
        if heading_for != ready_instances:
            return None
        if now - self._settled_at < policy.cooldown_s or latency_s is None:
            return None

        name = f"p{policy.percentile}"
        budget_ms = policy.budget_s * 1000
        if (
            self._over_since is not None
            and now - self._over_since >= policy.over_for_s
            and ready_instances < policy.maximum
        ):
            return self._decide(
                now,
                ready_instances,
                ready_instances + 1,
                f"{name} latency {latency_s * 1000:.1f} ms has been over the {budget_ms:g} ms "
                f"budget for {now - self._over_since:.1f} s: adding an instance "
                f"({ready_instances} to {ready_instances + 1}).",
            )
        if (
            self._under_since is not None
            and now - self._under_since >= policy.under_for_s
            and ready_instances > policy.minimum
        ):
            predicted = fewer_instances_latency(latency_s, ready_instances)
            return self._decide(
                now,
                ready_instances,
                ready_instances - 1,
                f"{name} latency {latency_s * 1000:.1f} ms has been well under the "
                f"{budget_ms:g} ms budget for {now - self._under_since:.1f} s, and "
                f"{_count(ready_instances - 1)} should still give about {predicted * 1000:.1f} ms "
                f"(at most {policy.down_fraction:.0%} of the budget): removing one "
                f"({ready_instances} to {ready_instances - 1}).",
            )
        return None

    def _update_streaks(self, now: float, latency_s: float | None, ready: int) -> None:
        policy = self.policy
        if latency_s is not None and latency_s > policy.budget_s:
            if self._over_since is None:
                self._over_since = now
        else:
            self._over_since = None
        comfortable = (
            latency_s is not None
            and ready > 1
            and fewer_instances_latency(latency_s, ready) <= policy.down_fraction * policy.budget_s
        )
        if comfortable:
            if self._under_since is None:
                self._under_since = now
        else:
            self._under_since = None

    def _decide(self, now: float, before: int, target: int, reason: str) -> ScaleDecision:
        decision = ScaleDecision(now, before, target, reason)
        self._pending = decision
        self.decisions.append(decision)
        return decision

    def _settle(self, now: float) -> None:
        self._pending = None
        self._settled_at = now
        # Evidence from the old set of instances says nothing about the new one.
        self._over_since = None
        self._under_since = None


def fewer_instances_latency(latency_s: float, instances: int) -> float:
    """The latency predicted with one instance fewer for the same load (see the module rule 5)."""
    if instances <= 1:
        return math.inf
    return latency_s * instances / (instances - 1)


def _count(instances: int, adjective: str = "") -> str:
    word = "instance" if instances == 1 else "instances"
    return f"{instances} {adjective + ' ' if adjective else ''}{word}"
