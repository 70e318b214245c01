"""Interest profiles on plain values: distributions, drift, rising and fading categories."""

import math

import numpy as np
import pytest

from services.inference.profile import cosine_distance, interest_profile, jensen_shannon

VIEW, PURCHASE = 1, 4


def test_jensen_shannon_bounds() -> None:
    p = np.array([0.5, 0.5, 0.0])
    assert jensen_shannon(p, p) == pytest.approx(0.0)
    assert jensen_shannon(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    # Hand-computed: p=(1,0), q=(.5,.5): m=(.75,.25); KL(p|m)=log2(4/3); KL(q|m)=.5log2(2/3)+.5log2(2)
    expected = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(2))
    assert jensen_shannon(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(expected)


def test_a_stable_user_has_no_drift() -> None:
    profile = interest_profile(["makeup"] * 30, [VIEW] * 30, recent_window=5)
    assert profile.long_term == [("makeup", 1.0)]
    assert profile.recent == [("makeup", 1.0)]
    assert profile.drift_score == pytest.approx(0.0)
    assert profile.rising == [] and profile.fading == []


def test_a_move_to_a_new_category_shows_as_drift_rising_and_fading() -> None:
    categories = ["makeup"] * 30 + ["fragrance"] * 5
    profile = interest_profile(categories, [VIEW] * 35, recent_window=5)
    assert profile.recent == [("fragrance", 1.0)]
    assert [c for c, _ in profile.long_term] == ["makeup", "fragrance"]
    assert sum(w for _, w in profile.long_term) == pytest.approx(1.0)
    assert profile.rising[0][0] == "fragrance" and profile.fading[0][0] == "makeup"
    assert profile.rising[0][1] == pytest.approx(profile.fading[0][1])  # shares move in pairs
    assert 0.3 < profile.drift_score <= 1.0


def test_drift_grows_with_the_size_of_the_move() -> None:
    scores = [
        interest_profile(["a"] * 30 + ["b"] * n + ["a"] * (10 - n), [VIEW] * 40, recent_window=10).drift_score
        for n in (0, 3, 6, 10)
    ]
    assert scores == sorted(scores) and scores[0] == pytest.approx(0.0) and scores[-1] > scores[1]


def test_behaviour_type_weights_the_recent_view() -> None:
    # Recent window: one purchase in "b" and one view in "a": the purchase weighs more.
    profile = interest_profile(["a", "b"], [VIEW, PURCHASE], recent_window=2)
    assert dict(profile.recent)["b"] > dict(profile.recent)["a"]


def test_unknown_categories_are_ignored_and_empty_histories_are_calm() -> None:
    profile = interest_profile(["", "a", ""], [VIEW] * 3, recent_window=2)
    assert profile.recent == [("a", 1.0)] and profile.long_term == [("a", 1.0)]
    empty = interest_profile([], [], recent_window=5)
    assert (empty.long_term, empty.recent, empty.drift_score) == ([], [], 0.0)


def test_cosine_distance_range() -> None:
    a = np.array([1.0, 0.0])
    assert cosine_distance(a, a) == pytest.approx(0.0)
    assert cosine_distance(a, -a) == pytest.approx(1.0)
    assert cosine_distance(a, np.array([0.0, 1.0])) == pytest.approx(0.5)
    assert cosine_distance(a, np.zeros(2)) == 0.0
