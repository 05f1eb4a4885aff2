"""The simulated users: preferences are real, degenerate answers are always disliked,
reactions are reproducible, and custom user models plug in."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from rlhb.simulate.users import (
    ConciseUser,
    ExampleUser,
    Judgement,
    PresetUser,
    WarmUser,
    load_user_model,
    sample_reaction,
    sample_reactions,
)

Q = "What is the largest planet in the solar system?"
GOOD = "Jupiter is the largest planet in the solar system, more than twice as massive as all the others combined."
LONG = (
    " ".join(["Jupiter is the largest planet in the solar system and it has many moons."] * 1)
    + " "
    + " ".join(f"It also has feature number {i} which astronomers describe in detail." for i in range(8))
)

DEGENERATE = {
    "empty": "",
    "cut_off": "Jupiter is the largest planet in the solar system, and it is known for its Great Red",
    "repetition": "Jupiter is big. Jupiter is big. Jupiter is big. Jupiter is big. Jupiter is big.",
    "off_topic": "Bananas grow in tropical climates and are a popular fruit rich in potassium for breakfast.",
}


@pytest.mark.parametrize("preset", ["concise", "example", "warm", "thorough"])
@pytest.mark.parametrize("kind", sorted(DEGENERATE))
def test_every_preset_dislikes_degenerate_answers(preset, kind):
    user = load_user_model(preset)
    bad = user.judge(Q, DEGENERATE[kind])
    good = user.judge(Q, GOOD)
    assert bad.degenerate == kind
    assert good.degenerate == ""
    assert bad.p_like < 0.05 and bad.p_dislike > 0.4
    assert bad.p_like < good.p_like and bad.p_dislike > good.p_dislike


def test_short_correct_answer_is_not_off_topic():
    # "The kneecap." shares no word with the question but is a fine answer.
    j = load_user_model("concise").judge("Which bone are babies born without?", "Babies are born without kneecaps.")
    assert j.degenerate == ""
    assert j.p_like > 0.5


def test_single_token_runs_count_as_repetition():
    j = load_user_model("concise").judge(Q, "Jupiter! ! ! ! ! is the answer.")
    assert j.degenerate == "repetition"


def test_concise_prefers_short_complete_answers():
    user = ConciseUser()
    assert user.judge(Q, GOOD).p_like > user.judge(Q, LONG).p_like + 0.2


def test_thorough_prefers_several_complete_sentences_the_opposite_of_concise():
    thorough, concise = load_user_model("thorough"), ConciseUser()
    full = (
        "Jupiter is the largest planet in the solar system. It is a gas giant made mostly of hydrogen and "
        "helium. Its mass is more than twice that of all the other planets combined, and it has dozens of "
        "moons, including Ganymede, the largest moon in the solar system."
    )
    assert thorough.judge(Q, full).p_like > thorough.judge(Q, GOOD).p_like + 0.1
    assert thorough.judge(Q, GOOD).p_like > thorough.judge(Q, "Jupiter is the largest one.").p_like
    # the two tastes disagree: what one likes best the other likes less
    assert concise.judge(Q, GOOD).p_like > concise.judge(Q, full).p_like


def test_example_and_warm_presets_reward_their_trait():
    plain = "Jupiter is the largest planet in the solar system."
    example = "Jupiter is the largest planet; for example, about 1,300 Earths would fit inside it."
    warm = "Great question! Jupiter is the largest planet in the solar system. I hope this helps you."
    assert ExampleUser().judge(Q, example).p_like > ExampleUser().judge(Q, plain).p_like + 0.2
    assert WarmUser().judge(Q, warm).p_like > WarmUser().judge(Q, plain).p_like + 0.2
    # Presets disagree: the trait one population likes is neutral to another.
    assert ConciseUser().judge(Q, plain).p_like > WarmUser().judge(Q, plain).p_like


def test_noise_bounds_probabilities_away_from_zero():
    noisy = ConciseUser(noise=0.3).judge(Q, "")
    assert noisy.p_like == pytest.approx(0.7 * 0.02 + 0.1)
    assert noisy.p_like + noisy.p_dislike <= 1.0


def test_reactions_follow_probabilities_and_are_reproducible():
    j = ConciseUser().judge(Q, GOOD)
    a = sample_reactions(j, 4000, random.Random(7))
    b = sample_reactions(j, 4000, random.Random(7))
    assert a == b
    likes = sum(r.like for r in a) / len(a)
    dislikes = sum(r.dislike for r in a) / len(a)
    assert likes == pytest.approx(j.p_like, abs=0.03)
    assert dislikes == pytest.approx(j.p_dislike, abs=0.02)
    assert not any(r.like and r.dislike for r in a)
    assert all(r.kinds()[0] == "view" for r in a)


def test_reaction_kinds_lists_each_event_once():
    r = sample_reaction(Judgement(p_like=1.0, p_dislike=0.0, p_click=1.0, preference=1.0), random.Random(0))
    assert r.kinds() == ["view", "click", "like"]


def test_invalid_parameters_are_rejected_with_a_message():
    with pytest.raises(ValueError, match="like_high must be >= like_low"):
        ConciseUser(like_low=0.5, like_high=0.2)
    with pytest.raises(ValueError, match="noise must be in"):
        ConciseUser(noise=1.5)
    with pytest.raises(ValueError, match="p_like \\+ p_dislike"):
        Judgement(p_like=0.7, p_dislike=0.5, p_click=0.1, preference=0.5)


@dataclass(frozen=True)
class ShoutingUser(PresetUser):
    """A custom population for the plug-in test: likes answers in capitals."""

    name: str = "shouting"

    def preference(self, question, answer, features):
        return 1.0 if answer.isupper() else 0.0


def test_plug_in_by_module_and_class():
    user = load_user_model(f"{__name__}:ShoutingUser", noise=0.0)
    loud = user.judge(Q, "JUPITER IS THE LARGEST PLANET.")
    quiet = user.judge(Q, "Jupiter is the largest planet.")
    assert user.name == "shouting"
    assert loud.p_like == pytest.approx(0.70) and quiet.p_like == pytest.approx(0.10)


def test_unknown_user_model_names_the_choices():
    with pytest.raises(ValueError, match="concise, example, warm"):
        load_user_model("grumpy")
    with pytest.raises(ValueError, match="cannot load user model"):
        load_user_model("no_such_module_x:Thing")
    with pytest.raises(ValueError, match="judge"):
        load_user_model("random:Random")
