"""Simulated users: hidden preferences that turn an answer into views, clicks, likes and
dislikes, with noise.

The trainer never reads this module: it only sees the events a user model emits (through
the API), exactly as it would with people. The demo reads the model's like probability
only to report how well each version does (an oracle view a real deployment lacks).

Every user model is pure and fast: ``judge(question, answer)`` is a function of the text
(no clock, no global state, no model), and ``sample_reactions`` draws from a caller-owned
``random.Random``, so a seeded run is reproducible.

Every preset dislikes degenerate answers, as people do, whatever it otherwise prefers:

- empty or near-empty answers (fewer than ``min_words`` words);
- cut-off answers (the last sentence is not closed: the generator hit its token limit);
- repetition (a high rate of repeated 3-grams, or one token many times in a row);
- off-topic text (a long answer that mentions none of the question's content words).

That floor is what keeps a "concise answers" preference from being won by repeating one
short phrase (reward hacking seen in an early experiment with plain PPO).

Plug in your own: any object with ``name`` and ``judge(question, answer) -> Judgement``
(the ``UserModel`` protocol), or subclass ``PresetUser`` and implement ``preference``.
Load it with ``load_user_model("package.module:ClassName")`` or register it under the
``rlhb.user_models`` entry-point group and pass its name.
"""

from __future__ import annotations

import importlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from rlhb.evaluation.text import AnswerFeatures

ENTRY_POINT_GROUP = "rlhb.user_models"


@dataclass(frozen=True)
class Judgement:
    """How one user population would react to one answer (probabilities per view)."""

    p_like: float
    p_dislike: float
    p_click: float
    preference: float
    """How well the answer matches the hidden preference, in [0, 1] (0 for degenerate answers)."""
    degenerate: str = ""
    """Why the answer is degenerate ("empty", "cut_off", "repetition", "off_topic"), or ""."""

    def __post_init__(self) -> None:
        for name in ("p_like", "p_dislike", "p_click", "preference"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Judgement.{name} must be in [0, 1], got {value}")
        if self.p_like + self.p_dislike > 1.0 + 1e-9:
            raise ValueError(
                f"p_like + p_dislike must be <= 1 (like and dislike exclude each other), "
                f"got {self.p_like} + {self.p_dislike}"
            )


@dataclass(frozen=True)
class Reaction:
    """One viewer's reaction to an answer they viewed."""

    click: bool
    like: bool
    dislike: bool

    def kinds(self) -> list[str]:
        """Feedback event kinds this reaction emits, in the order a person acts."""
        out = ["view"]
        out += ["click"] if self.click else []
        out += ["like"] if self.like else []
        out += ["dislike"] if self.dislike else []
        return out


@runtime_checkable
class UserModel(Protocol):
    """The plug-in interface: a name and a pure judgement of (question, answer)."""

    name: str

    def judge(self, question: str, answer: str) -> Judgement: ...


def sample_reaction(judgement: Judgement, rng: random.Random) -> Reaction:
    """One viewer: like, dislike or neither (exclusive), and an independent click."""
    u = rng.random()
    like = u < judgement.p_like
    dislike = not like and u < judgement.p_like + judgement.p_dislike
    return Reaction(click=rng.random() < judgement.p_click, like=like, dislike=dislike)


def sample_reactions(judgement: Judgement, viewers: int, rng: random.Random) -> list[Reaction]:
    return [sample_reaction(judgement, rng) for _ in range(viewers)]


@dataclass(frozen=True)
class PresetUser:
    """A population with one hidden preference and the shared dislike of degenerate answers.

    Non-degenerate answers: p_like moves linearly from ``like_low`` (preference 0) to
    ``like_high`` (preference 1), p_dislike from ``dislike_high`` to ``dislike_low``.
    Then ``noise`` mixes in a uniformly random reaction (like / dislike / neither).
    """

    name: str = "preset"
    like_low: float = 0.10
    """p_like of a non-degenerate answer with preference 0."""
    like_high: float = 0.70
    """p_like of an answer with preference 1."""
    dislike_high: float = 0.30
    """p_dislike of a non-degenerate answer with preference 0."""
    dislike_low: float = 0.04
    """p_dislike of an answer with preference 1."""
    degenerate_like: float = 0.02
    """p_like of a degenerate answer."""
    degenerate_dislike: float = 0.55
    """p_dislike of a degenerate answer."""
    click_low: float = 0.15
    """p_click of a degenerate answer; non-degenerate ones go up to click_low + click_span."""
    click_span: float = 0.35
    noise: float = 0.05
    """Probability that a viewer reacts at random, whatever the answer."""
    min_words: int = 4
    """Answers with fewer words are 'empty'."""
    max_repeated_ngram_rate: float = 0.2
    """Above this fraction of repeated 3-grams an answer is 'repetition'."""
    max_token_run: int = 4
    """This many identical tokens in a row is 'repetition' ("no no no no")."""
    off_topic_min_words: int = 12
    """An answer this long that shares no content word with the question is 'off_topic'
    (short correct answers such as "The kneecap." need not repeat the question)."""

    def __post_init__(self) -> None:
        for name in (
            "like_low",
            "like_high",
            "dislike_high",
            "dislike_low",
            "degenerate_like",
            "degenerate_dislike",
            "click_low",
            "noise",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{type(self).__name__}.{name} must be in [0, 1], got {value}")
        if self.like_high < self.like_low:
            raise ValueError("like_high must be >= like_low (a preferred answer is liked more, not less)")
        if (
            max(
                self.like_low + self.dislike_high,
                self.like_high + self.dislike_low,
                self.degenerate_like + self.degenerate_dislike,
            )
            > 1.0
        ):
            raise ValueError("each like probability plus its dislike probability must be <= 1")
        if self.click_low + self.click_span > 1.0:
            raise ValueError("click_low + click_span must be <= 1")

    # -- what presets override
    def preference(self, question: str, answer: str, features: AnswerFeatures) -> float:
        """How well a non-degenerate answer matches the hidden preference, in [0, 1]."""
        return 0.5

    # -- shared
    def degenerate_reason(self, features: AnswerFeatures) -> str:
        if features.n_words < self.min_words:
            return "empty"
        if features.repeated_ngram_rate > self.max_repeated_ngram_rate or features.longest_run >= self.max_token_run:
            return "repetition"
        if not features.ends_cleanly:
            return "cut_off"
        if features.topic_overlap == 0.0 and features.n_words >= self.off_topic_min_words:
            return "off_topic"
        return ""

    def judge(self, question: str, answer: str) -> Judgement:
        features = AnswerFeatures.of(question, answer)
        reason = self.degenerate_reason(features)
        if reason:
            pref = 0.0
            p_like, p_dislike, p_click = self.degenerate_like, self.degenerate_dislike, self.click_low
        else:
            pref = min(1.0, max(0.0, float(self.preference(question, answer, features))))
            p_like = self.like_low + (self.like_high - self.like_low) * pref
            p_dislike = self.dislike_high + (self.dislike_low - self.dislike_high) * pref
            p_click = self.click_low + self.click_span * (0.5 + 0.5 * pref)
        # Noise: with probability `noise` the viewer likes, dislikes or ignores at random.
        p_like = (1 - self.noise) * p_like + self.noise / 3
        p_dislike = (1 - self.noise) * p_dislike + self.noise / 3
        return Judgement(p_like=p_like, p_dislike=p_dislike, p_click=p_click, preference=pref, degenerate=reason)


def _length_score(n_words: int, target: int, limit: int) -> float:
    """1 up to ``target`` words, falling linearly to 0 at ``limit`` words."""
    if n_words <= target:
        return 1.0
    return max(0.0, 1.0 - (n_words - target) / max(1, limit - target))


@dataclass(frozen=True)
class ConciseUser(PresetUser):
    """Likes concise, complete, on-topic answers: closed within ``target_words`` words and
    mentioning what was asked. Longer answers lose appeal linearly up to ``limit_words``."""

    name: str = "concise"
    target_words: int = 30
    """Answers up to this many words are fully concise."""
    limit_words: int = 90
    """At this many words conciseness is worth nothing."""
    topic_weight: float = 0.3
    """Share of the preference that comes from mentioning the question's content words."""

    def preference(self, question: str, answer: str, features: AnswerFeatures) -> float:
        length = _length_score(features.n_words, self.target_words, self.limit_words)
        topic = 1.0 if features.topic_overlap is None else min(1.0, 2.0 * features.topic_overlap)
        return length * (1.0 - self.topic_weight + self.topic_weight * topic)


EXAMPLE_MARKERS = re.compile(
    r"\b(for example|for instance|e\.g\.|such as|imagine|let's say|suppose|consider|like when|"
    r"as an example|an example|example:)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ExampleUser(PresetUser):
    """Likes answers that give a concrete example ("for example", "such as", a number)."""

    name: str = "example"
    without_example: float = 0.15
    """Preference of a clean answer with no example at all."""

    def preference(self, question: str, answer: str, features: AnswerFeatures) -> float:
        has_marker = bool(EXAMPLE_MARKERS.search(answer))
        has_number = bool(re.search(r"\d", answer))
        score = self.without_example + (1 - self.without_example) * (1.0 if has_marker else 0.5 if has_number else 0.0)
        return score * _length_score(features.n_words, 60, 150)


WARM_MARKERS = re.compile(
    r"\b(glad|happy to|great question|good question|hope (this|that) helps|you're welcome|of course|sure|"
    r"feel free|don't worry|i understand|sorry to hear|thank you|thanks|wonderful|love to|absolutely)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class WarmUser(PresetUser):
    """Likes a warm tone: friendly phrases, a little enthusiasm, addressing the reader."""

    name: str = "warm"

    def preference(self, question: str, answer: str, features: AnswerFeatures) -> float:
        warmth = len(WARM_MARKERS.findall(answer)) + min(1, answer.count("!"))
        addresses_reader = 1 if re.search(r"\byou(r)?\b", answer, re.IGNORECASE) else 0
        return min(1.0, 0.1 + 0.35 * warmth + 0.2 * addresses_reader)


SENTENCE_END = re.compile(r"[.!?](?:\s|$)")


@dataclass(frozen=True)
class ThoroughUser(PresetUser):
    """Likes thorough, complete answers of several sentences that stay on the question: the
    opposite taste to ``concise``, so a policy biased toward brevity cannot pass with it."""

    name: str = "thorough"
    sentences: int = 3
    """Complete sentences for full marks on structure."""
    words: int = 40
    """Words for full marks on substance (answers past ``limit_words`` lose it again)."""
    limit_words: int = 200
    topic_weight: float = 0.3

    def preference(self, question: str, answer: str, features: AnswerFeatures) -> float:
        n_sentences = len(SENTENCE_END.findall(answer.strip()))
        structure = min(1.0, n_sentences / self.sentences)
        substance = min(1.0, features.n_words / self.words) * _length_score(features.n_words, 150, self.limit_words)
        topic = 1.0 if features.topic_overlap is None else min(1.0, 2.0 * features.topic_overlap)
        return (0.5 * structure + 0.5 * substance) * (1.0 - self.topic_weight + self.topic_weight * topic)


PRESETS: dict[str, Callable[..., PresetUser]] = {
    "concise": ConciseUser,
    "example": ExampleUser,
    "warm": WarmUser,
    "thorough": ThoroughUser,
}


def load_user_model(spec: str, **overrides) -> UserModel:
    """A preset name (``concise``, ``example``, ``warm``, ``thorough``), ``package.module:ClassName``, or
    the name of an ``rlhb.user_models`` entry point. ``overrides`` go to the constructor."""
    if spec in PRESETS:
        factory = PRESETS[spec]
    elif ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot load user model {spec!r}: {e}") from e
    else:
        from importlib.metadata import entry_points

        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
        if not found:
            raise ValueError(
                f"unknown user model {spec!r}: use a preset ({', '.join(PRESETS)}), 'package.module:ClassName', "
                f"or an entry point in the {ENTRY_POINT_GROUP!r} group"
            )
        factory = found[0].load()
    model = factory(**overrides)
    if not isinstance(model, UserModel):
        raise ValueError(f"user model {spec!r} must have a `name` and a `judge(question, answer)` method")
    return model
