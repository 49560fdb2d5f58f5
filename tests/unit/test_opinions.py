import pytest

from gbatch_flows.opinions import OpinionAdviser


def test_asks_for_the_minimum_first():
    verdict = OpinionAdviser(3, 7, 0.7).advise([])
    assert verdict.more == 3 and verdict.answer is None


def test_confident_majority_stops():
    verdict = OpinionAdviser(3, 7, 0.6).advise(["joy", "joy", "anger"])
    assert verdict.answer == "joy" and verdict.more == 0 and verdict.confident
    assert verdict.share == pytest.approx(2 / 3)


def test_split_vote_asks_for_the_fewest_extra_votes_that_could_reach_confidence():
    # 2 of 3 agree, 0.75 needed: 1 more vote gives 3/4 = 0.75
    assert OpinionAdviser(3, 7, 0.75).advise(["joy", "joy", "anger"]).more == 1
    # 1/1/1 split, 0.7 needed: the leader needs k more with (1+k)/(3+k) >= 0.7 -> k = 4 (5/7 = 0.714)
    assert OpinionAdviser(3, 7, 0.7).advise(["a", "b", "c"]).more == 4


def test_stops_at_opinions_max_without_confidence():
    verdict = OpinionAdviser(2, 4, 0.9).advise(["a", "b", "a", "b"])
    assert verdict.more == 0 and not verdict.confident and verdict.answer == "a"  # tie: first seen wins


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="opinions_min"):
        OpinionAdviser(5, 3, 0.5)
    with pytest.raises(ValueError, match="confidence"):
        OpinionAdviser(1, 3, 1.5)
