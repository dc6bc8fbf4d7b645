"""Rise/fall counting, edge by edge."""

import itertools

import pytest

from proxy.health import HealthState


@pytest.mark.parametrize("fall", [1, 2, 3, 5])
def test_up_server_goes_down_on_the_fall_th_failure_in_a_row(fall):
    h = HealthState(rise=2, fall=fall)
    for _ in range(fall - 1):
        assert h.observe(False) is None and h.up
    assert h.observe(False) is False and not h.up


@pytest.mark.parametrize("rise", [1, 2, 4])
def test_down_server_comes_up_on_the_rise_th_success_in_a_row(rise):
    h = HealthState(rise=rise, fall=1, up=False)
    for _ in range(rise - 1):
        assert h.observe(True) is None and not h.up
    assert h.observe(True) is True and h.up


def test_an_interrupted_streak_starts_again():
    h = HealthState(rise=2, fall=3)
    for ok in (False, False, True, False, False):
        assert h.observe(ok) is None
    assert h.observe(False) is False
    assert h.observe(True) is None
    assert h.observe(False) is None
    assert h.observe(True) is None
    assert h.observe(True) is True


def test_every_sequence_of_five_matches_a_reference_count():
    for rise, fall in [(1, 1), (2, 3), (3, 2)]:
        for seq in itertools.product([True, False], repeat=6):
            h, up, streak = HealthState(rise=rise, fall=fall), True, 0
            for ok in seq:
                streak = 0 if ok == up else streak + 1
                expected = None
                if streak and streak >= (rise if ok else fall):
                    up, streak, expected = ok, 0, ok
                assert h.observe(ok) == expected
                assert h.up == up
