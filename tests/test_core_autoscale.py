"""The autoscale controller on synthetic latencies with a fake clock: when it adds and removes an
instance, and when it must not (noise near the budget, cool-down, limits, a change under way)."""

from __future__ import annotations

import numpy as np
import pytest

from flowerdemo.core.autoscale import (
    AutoscaleController,
    AutoscalePolicy,
    ScaleDecision,
    fewer_instances_latency,
)

BUDGET = 0.050
STEP = 0.5  # seconds between observations, as the headless runner feeds it


def policy(**overrides: object) -> AutoscalePolicy:
    values: dict[str, object] = {"minimum": 1, "maximum": 4, "budget_s": BUDGET}
    values.update(overrides)
    return AutoscalePolicy(**values)  # type: ignore[arg-type]


class Simulation:
    """A fake stack that reaches each target after `start_s`, observed every STEP seconds."""

    def __init__(self, controller: AutoscaleController, instances: int, start_s: float = 1.5):
        self.controller = controller
        self.now = 0.0
        self.ready = instances
        self.target = instances
        self.start_s = start_s
        self._reached_at = 0.0
        self.decisions: list[ScaleDecision] = []

    def run(self, seconds: float, latency) -> None:  # latency: (now, ready) -> seconds | None
        end = self.now + seconds
        while self.now < end:
            if self.ready != self.target and self.now >= self._reached_at:
                self.ready = self.target
            decision = self.controller.observe(self.now, latency(self.now, self.ready), self.ready)
            if decision is not None:
                self.decisions.append(decision)
                self.target = decision.target
                self._reached_at = self.now + self.start_s
            self.now += STEP


def test_sustained_overload_adds_one_instance_after_over_for_s():
    sim = Simulation(AutoscaleController(policy()), instances=1)
    sim.run(2.0, lambda now, ready: 0.030)
    sim.run(10.0, lambda now, ready: 0.080 / ready)  # 80 ms on one instance, 40 ms on two
    assert len(sim.decisions) == 1
    (decision,) = sim.decisions
    assert (decision.before, decision.target) == (1, 2)
    # Over budget from t=2.0; the third second of it is the first that may decide.
    assert decision.at == pytest.approx(5.0)
    assert "over the 50 ms budget" in decision.reason and "1 to 2" in decision.reason


def test_noise_near_the_budget_does_not_flap():
    rng = np.random.default_rng(3)
    controller = AutoscaleController(policy())
    sim = Simulation(controller, instances=2)
    # p90 wandering from 80% to 110% of the budget, for five minutes.
    samples = iter(rng.uniform(0.8 * BUDGET, 1.1 * BUDGET, size=1000))
    sim.run(300.0, lambda now, ready: float(next(samples)))
    assert sim.decisions == []


def test_oscillation_across_the_budget_faster_than_over_for_s_does_nothing():
    sim = Simulation(AutoscaleController(policy()), instances=2)
    sim.run(120.0, lambda now, ready: 0.060 if int(now) % 2 else 0.040)
    assert sim.decisions == []


def test_cool_down_spaces_the_changes_and_the_maximum_holds():
    controller = AutoscaleController(policy(maximum=3, cooldown_s=6.0))
    sim = Simulation(controller, instances=1)
    sim.run(60.0, lambda now, ready: 0.200)  # hopeless: over budget whatever the count
    assert [(d.before, d.target) for d in sim.decisions] == [(1, 2), (2, 3)]
    first, second = sim.decisions
    # The second waits for the first to be reached (1.5 s), then the cool-down.
    assert second.at - first.at >= 1.5 + 6.0
    assert controller.decisions == sim.decisions


def test_well_under_the_budget_removes_instances_one_at_a_time_down_to_the_minimum():
    controller = AutoscaleController(policy(minimum=2, under_for_s=10.0, cooldown_s=6.0))
    sim = Simulation(controller, instances=4)
    sim.run(120.0, lambda now, ready: 0.004 * ready)  # light load: one fewer still fits easily
    assert [(d.before, d.target) for d in sim.decisions] == [(4, 3), (3, 2)]
    assert sim.decisions[1].at - sim.decisions[0].at >= 10.0
    assert "well under" in sim.decisions[0].reason and "4 to 3" in sim.decisions[0].reason


def test_no_removal_when_one_fewer_would_not_fit():
    # 30 ms on 2 instances: one would give about 60 ms, over the budget.
    assert fewer_instances_latency(0.030, 2) == pytest.approx(0.060)
    sim = Simulation(AutoscaleController(policy()), instances=2)
    sim.run(120.0, lambda now, ready: 0.030)
    assert sim.decisions == []


def test_the_load_rises_and_falls_and_the_count_follows_without_flapping():
    """Closed loop: latency ~ outstanding / throughput, throughput ~ 25 req/s per instance."""
    load = {"outstanding": 1}
    sim = Simulation(AutoscaleController(policy(maximum=4)), instances=1)

    def latency(now: float, ready: int) -> float:
        return max(0.010, load["outstanding"] / (25.0 * ready) * 0.5)

    for outstanding in (1, 2, 4, 6):
        load["outstanding"] = outstanding
        sim.run(30.0, latency)
    counts = [d.target for d in sim.decisions]
    assert counts == sorted(counts), "only additions while the load rises"
    assert sim.ready == 3  # 6 outstanding: 40 ms on 3 instances, 60 ms on 2
    load["outstanding"] = 1
    sim.run(90.0, latency)
    assert sim.ready == 1
    ups = sum(1 for d in sim.decisions if d.target > d.before)
    downs = sum(1 for d in sim.decisions if d.target < d.before)
    assert (ups, downs) == (2, 2)


def test_nothing_is_decided_while_a_change_is_under_way():
    controller = AutoscaleController(policy(settle_timeout_s=20.0))
    first = [controller.observe(float(t), 0.100, 1) for t in np.arange(0.0, 4.0, STEP)]
    assert [d.target for d in first if d is not None] == [2]
    # The stack does not get the second instance ready; over budget all along.
    later = [controller.observe(float(t), 0.100, 1) for t in np.arange(4.0, 23.0, STEP)]
    assert all(d is None for d in later)
    # After the settle time-out the controller carries on from what is ready (and cools down).
    more = [controller.observe(float(t), 0.100, 1) for t in np.arange(23.0, 40.0, STEP)]
    decided = [d for d in more if d is not None]
    assert decided and (decided[0].before, decided[0].target) == (1, 2)


def test_limits_are_restored_at_once_and_a_converging_stack_is_left_alone():
    controller = AutoscaleController(policy(minimum=2, maximum=3))
    decision = controller.observe(0.0, 0.010, 1)
    assert decision is not None and (decision.before, decision.target) == (1, 2)
    assert "below the minimum of 2" in decision.reason
    assert controller.observe(0.5, 0.010, 2) is None  # reached; cooling down

    controller = AutoscaleController(policy(minimum=2, maximum=3))
    decision = controller.observe(0.0, 0.010, 5)
    assert decision is not None and decision.target == 3 and "above the maximum" in decision.reason

    # A crashed instance restarting (target 2, 1 ready) is not below the minimum, and its
    # latency while it is away decides nothing.
    controller = AutoscaleController(policy(minimum=2))
    decisions = [
        controller.observe(float(t), 0.200, 1, target_instances=2)
        for t in np.arange(0.0, 10.0, STEP)
    ]
    assert all(d is None for d in decisions)


def test_no_answers_is_no_evidence():
    controller = AutoscaleController(policy())
    for t in np.arange(0.0, 30.0, STEP):
        latency = 0.100 if int(t * 2) % 4 else None  # every other second nothing answered
        assert controller.observe(float(t), latency, 1) is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"minimum": 0}, "minimum must be at least 1"),
        ({"minimum": 3, "maximum": 2}, "must not be below the minimum"),
        ({"budget_s": 0.0}, "budget must be positive"),
        ({"percentile": 100}, "between 1 and 99"),
    ],
)
def test_policy_rejects_nonsense(overrides, message):
    with pytest.raises(ValueError, match=message):
        policy(**overrides)
