"""Pure logic, tested without sleeping: the reporting policy and the agent's own debounce."""

from __future__ import annotations

from agent.config import ReportingConfig
from agent.policy import ReportingPolicy, distance_m
from drivers.gnss.fix import Fix
from drivers.gpio import Debouncer

CFG = ReportingConfig(moving_interval_s=10, stopped_interval_s=120, moving_above_mps=1.5, distance_m=200,
                      heading_change_deg=30, speed_change_mps=5)


def fix(lat: float = 42.0, lon: float = 23.0, speed: float = 10.0, course: float = 90.0, mode: int = 3) -> Fix:
    if mode == 1:
        return Fix(time_ms=0, mode=1)
    return Fix(time_ms=0, mode=mode, lat=lat, lon=lon, speed_mps=speed, course_deg=course)


def run(policy: ReportingPolicy, t: float, f: Fix) -> str | None:
    reason = policy.decide(f, t)
    if reason is not None:
        policy.reported(f, t)
    return reason


def test_time_separate_intervals_moving_and_stopped() -> None:
    policy = ReportingPolicy(CFG)
    assert run(policy, 0, fix()) == "start"
    assert run(policy, 5, fix()) is None
    assert run(policy, 10, fix()) == "interval"  # moving: every 10 s
    assert run(policy, 11, fix(speed=0)) == "speed"  # stopping is a speed change
    assert run(policy, 100, fix(speed=0)) is None
    assert run(policy, 131, fix(speed=0)) == "interval"  # stopped: every 120 s


def test_distance_heading_and_speed_changes() -> None:
    policy = ReportingPolicy(CFG)
    run(policy, 0, fix())
    assert distance_m(42.0, 23.0, 42.0019, 23.0) > 200
    assert run(policy, 1, fix(lat=42.0019)) == "distance"
    assert run(policy, 2, fix(lat=42.0019, course=135)) == "heading"
    assert run(policy, 3, fix(lat=42.0019, course=135, speed=16)) == "speed"
    assert run(policy, 4, fix(lat=42.0019, course=140, speed=16)) is None


def test_fix_lost_and_regained_are_reported_once() -> None:
    policy = ReportingPolicy(CFG)
    run(policy, 0, fix())
    assert run(policy, 1, fix(mode=1)) == "fix_lost"
    assert run(policy, 2, fix(mode=1)) is None
    assert run(policy, 3, fix()) == "fix_regained"


def test_no_heading_report_while_stopped() -> None:
    policy = ReportingPolicy(CFG)
    run(policy, 0, fix(speed=0))
    assert run(policy, 1, fix(speed=0.5, course=270)) is None  # a parked car's course is noise


def test_debounce_takes_the_first_edge_and_ignores_the_chatter() -> None:
    d = Debouncer(30, initial=False)
    assert d.edge(True, 0.000) == [(True, 0.000)]
    for i in range(1, 6):
        assert d.edge(i % 2 == 0, i * 0.002) == []
    assert d.edge(True, 0.012) == []
    assert d.settle(0.05) == []  # it settled pressed: nothing more to say
    assert d.state is True


def test_a_release_inside_the_lockout_is_not_lost() -> None:
    d = Debouncer(30, initial=False)
    d.edge(True, 0.0)
    assert d.edge(False, 0.010) == []  # too soon to tell from bounce
    assert d.settle(0.020) == []
    assert d.settle(0.031) == [(False, 0.030)]
    assert d.state is False


def test_quick_release_and_press_again_are_both_seen() -> None:
    d = Debouncer(30, initial=False)
    d.edge(True, 0.0)
    d.edge(False, 0.005)  # released inside the lockout; no tick came before the next press
    assert d.edge(True, 0.055) == [(False, 0.030), (True, 0.055)]
