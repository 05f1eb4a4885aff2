"""Toy behavior records with an easy, separable preference: users like answers that contain
the keyword ``KEYWORD`` and dislike the others. Shared by the reward-model and algorithm tests."""

from __future__ import annotations

import random

from schemas.behavior import BehaviorRecord

KEYWORD = "banana"
LIKED_TEXT = "Users liked this answer at a high rate and disliked it at a low rate."
DISLIKED_TEXT = "Users liked this answer at a low rate and disliked it at a high rate."

TOPICS = [
    "the sky",
    "rain",
    "a cat",
    "the sea",
    "bread",
    "music",
    "a train",
    "winter",
    "a garden",
    "the moon",
    "coffee",
    "a river",
    "chess",
    "paper",
    "a bridge",
    "snow",
    "a city",
    "the wind",
    "tea",
    "a forest",
    "glass",
    "a clock",
    "fire",
    "salt",
    "a horse",
    "the desert",
    "ice",
    "a lamp",
    "stone",
    "a song",
    "a boat",
    "a mountain",
    "rice",
    "a mirror",
    "thunder",
    "a book",
    "a road",
    "honey",
    "a star",
    "clouds",
]
FILLERS = ["It is simple.", "Many people ask this.", "Here is a short answer.", "Think of it this way.", "In short:"]


def toy_record(i: int, query: str, response: str, liked: bool, views: int = 4) -> BehaviorRecord:
    likes, dislikes = (3, 0) if liked else (0, 2)
    return BehaviorRecord(
        impression_id=f"imp-{i}",
        query=query,
        response=response,
        behavior_prompt=LIKED_TEXT,
        adapter_version="base",
        counts={"view": views, "like": likes, "dislike": dislikes},
        # as the aggregator's default rates encoding writes them: levels and sentence agree
        buckets={"like_rate": 2 if liked else 0, "dislike_rate": 0 if liked else 2},
        behavior_text=LIKED_TEXT if liked else DISLIKED_TEXT,
        reward=(likes - dislikes) / views,
        encoding="rates",
    )


def toy_records(n_queries: int = 40, seed: int = 0) -> list[BehaviorRecord]:
    """Two answers per query: one with the keyword (liked), one without (disliked)."""
    rng = random.Random(seed)
    records = []
    for q in range(n_queries):
        topic = TOPICS[q % len(TOPICS)]
        query = f"Tell me about {topic}" + ("?" if q < len(TOPICS) else f", part {q // len(TOPICS)}?")
        filler = rng.choice(FILLERS)
        records.append(
            toy_record(2 * q, query, f"{filler} {topic} is like a {KEYWORD}.", liked=True, views=rng.randint(2, 6))
        )
        records.append(
            toy_record(2 * q + 1, query, f"{filler} {topic} is what it is.", liked=False, views=rng.randint(2, 6))
        )
    return records
