"""The alert policy (omni_ros.flow.alert_policy): minimum confidence, cooldown per standing
instruction on the caller's clock, a changed instruction starting fresh, counters; and the
node's parameters and alert QoS that carry it."""
import pytest

from omni_ros.flow.alert_policy import (BELOW_CONFIDENCE, IN_COOLDOWN, PUBLISH, AlertPolicy)

pytestmark = pytest.mark.unit

S = 1_000_000_000
T0 = 1_700_000_000 * S
A, B = "Watch the door.", "Watch the loading bay."


def test_alerts_below_the_minimum_confidence_are_held_back_and_counted():
    policy = AlertPolicy(min_confidence=0.6)
    assert policy.decide(A, 0.59, T0) == BELOW_CONFIDENCE
    assert policy.decide(A, 0.6, T0 + 1) == PUBLISH        # at the minimum: published
    assert policy.decide(A, 0.95, T0 + 2) == PUBLISH       # no cooldown by default
    assert policy.counters.snapshot() == {"alerts_published": 2, "alerts_below_confidence": 1,
                                          "alerts_in_cooldown": 0}


def test_cooldown_per_instruction_on_the_callers_clock():
    policy = AlertPolicy(cooldown_sec=10.0, instruction=A)
    assert policy.decide(A, 0.9, T0) == PUBLISH
    assert policy.decide(A, 0.9, T0 + 3 * S) == IN_COOLDOWN
    assert policy.cooldown_left_ns(A, T0 + 3 * S) == 7 * S
    # held-back alerts do not extend the cooldown: 10 s after the published one is free again
    assert policy.decide(A, 0.9, T0 + 9 * S) == IN_COOLDOWN
    assert policy.decide(A, 0.9, T0 + 10 * S) == PUBLISH
    assert policy.decide(A, 0.9, T0 + 19 * S) == IN_COOLDOWN
    assert policy.counters.alerts_published == 2 and policy.counters.alerts_in_cooldown == 3


def test_a_changed_instruction_starts_fresh():
    policy = AlertPolicy(cooldown_sec=60.0, instruction=A)
    assert policy.decide(A, 0.9, T0) == PUBLISH
    policy.instruction_in_force(A)                        # the same value set again: no change
    assert policy.decide(A, 0.9, T0 + S) == IN_COOLDOWN
    policy.instruction_in_force(B)
    assert policy.decide(B, 0.9, T0 + 2 * S) == PUBLISH    # at once under the new instruction
    assert policy.decide(B, 0.9, T0 + 3 * S) == IN_COOLDOWN
    policy.instruction_in_force(A)                        # back to A: a change too, fresh
    assert policy.decide(A, 0.9, T0 + 4 * S) == PUBLISH
    # an alert raised under another instruction than the last published one is fresh as well
    # (a turn that began before the change and alerts after it)
    assert policy.decide(B, 0.9, T0 + 5 * S) == PUBLISH


def test_a_clock_that_jumps_back_ends_the_cooldown():
    """Sim time: a bag replayed again or a simulator reset starts the clock over."""
    policy = AlertPolicy(cooldown_sec=30.0)
    assert policy.decide(A, 0.9, 500 * S) == PUBLISH
    assert policy.decide(A, 0.9, 510 * S) == IN_COOLDOWN
    assert policy.decide(A, 0.9, 5 * S) == PUBLISH
    assert policy.decide(A, 0.9, 6 * S) == IN_COOLDOWN


def test_settings_change_at_run_time_and_are_checked():
    policy = AlertPolicy()
    assert policy.decide(A, 0.1, T0) == PUBLISH
    policy.configure(min_confidence=0.5, cooldown_sec=0.0)
    assert policy.decide(A, 0.1, T0 + 1) == BELOW_CONFIDENCE
    policy.configure(min_confidence=0.0, cooldown_sec=5.0)
    assert policy.decide(A, 0.1, T0 + 2) == IN_COOLDOWN    # the last published alert counts
    with pytest.raises(ValueError, match=r"min_confidence must be in \[0, 1\], got 1.5"):
        policy.configure(min_confidence=1.5, cooldown_sec=0.0)
    with pytest.raises(ValueError, match="cooldown_sec must not be negative, got -1"):
        policy.configure(min_confidence=0.0, cooldown_sec=-1)


def test_memory_does_not_grow_with_instructions_or_alerts():
    policy = AlertPolicy(cooldown_sec=1.0)
    before = sorted(vars(policy))
    for k in range(5000):
        policy.instruction_in_force(f"instruction {k}")
        policy.decide(f"instruction {k}", 0.9, T0 + k * S // 10)
    assert sorted(vars(policy)) == before
    assert all(not isinstance(v, (list, dict, set)) for v in vars(policy).values())


def test_the_parameters_are_declared_dynamic_with_ranges_and_documented():
    from pathlib import Path

    from omni_ros.ros.parameters import SPECS_BY_NAME, check_value
    from omni_ros.ros.qos import ALERTS, alerts
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    minimum, cooldown, history = (SPECS_BY_NAME[n] for n in (
        "alert_min_confidence", "alert_cooldown_sec", "alert_history"))
    assert minimum.dynamic and cooldown.dynamic and not history.dynamic
    assert check_value(minimum, 1.2) == \
        "alert_min_confidence: 1.2 refused; it takes a double in [0.0, 1.0]"
    assert check_value(cooldown, -1.0) is not None and check_value(cooldown, 30) is None
    assert check_value(history, 0) is not None
    docs = (Path(__file__).resolve().parents[1] / "docs" / "parameters.md").read_text()
    for spec in (minimum, cooldown, history):
        assert f"| `{spec.name}` |" in docs
    assert ALERTS.durability == DurabilityPolicy.TRANSIENT_LOCAL
    assert ALERTS.reliability == ReliabilityPolicy.RELIABLE and ALERTS.depth == history.default
    assert alerts(7).depth == 7
