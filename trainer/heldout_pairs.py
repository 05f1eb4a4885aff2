"""D's held-out pairs on disk: what ``d_heldout_auroc`` was measured on, so a reader can score them again.

RLHB measures its discriminator on held-out records (split by query, never trained on): each record's
real triplet (query, answer, logged sentence) against the same answer under a fixed behavior-swapped
sentence (``RLHBTrainer.heldout_accuracy``). ``d_heldout_auroc`` in the metrics is one number; this
file keeps the pairs behind it, with D's logits, so that anyone who knows more about the answers (the
demo's simulated users know each answer's true like probability) can put that number next to the best
any model could reach on the same pairs (``rlhb.evaluation.d_ceiling``). The trainer writes it and
knows nothing of who reads it.

One file per training run (a round of ``rlhb trainer``: ``RLHB_STATE_DIR/trainer-metrics/d-heldout/
<version>.jsonl``, beside the round's metrics file), written at the run's last held-out measurement, the
one whose ``d_heldout_auroc`` is the last metrics row (the number the demo reports). JSON lines:

- line 1, ``{"kind": "meta", ...}``: version, iteration, the logged ``d_heldout_auroc``, the encoding
  the trainer used (``core.behavior.encoding.encoding_to_json``; None if it cannot be serialized), and
  the behavior pool's sentences with their preference levels (``sentences``: text -> [[key, level], ...]),
  from which the trainer drew the swaps (``trainer.records.BehaviorPool.from_signatures`` rebuilds it);
- then one ``{"kind": "pair", ...}`` per held-out record: impression_id, query, answer, counts (the
  record's raw counts), real (its logged sentence), swap (the swapped one), z_real and z_swap (D's
  logits; AUROC of z_real against z_swap = ``d_heldout_auroc``).

At most ``heldout_max`` (64 by default) pairs: cheap. No torch here.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

DIR_NAME = "d-heldout"
FORMAT = 1


def heldout_pairs_path(metrics_dir: Path, version: str) -> Path:
    """Where the round ``version`` writes its held-out pairs: ``metrics_dir/d-heldout/<version>.jsonl``
    (a subfolder, so readers of ``metrics_dir/*.jsonl`` see metrics files only)."""
    return Path(metrics_dir) / DIR_NAME / f"{version}.jsonl"


@dataclass(frozen=True)
class HeldoutPair:
    impression_id: str
    query: str
    answer: str
    real: str
    """The record's logged behavior sentence."""
    swap: str
    """The behavior-swapped sentence it is measured against."""
    z_real: float
    """D's logit for (query, answer, real)."""
    z_swap: float
    """D's logit for (query, answer, swap)."""
    counts: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class HeldoutPairs:
    meta: dict
    pairs: list[HeldoutPair]

    @property
    def sentences(self) -> dict[str, tuple[tuple[str, int], ...]]:
        """The behavior pool's sentences and their (key, level) signatures, in the trainer's key order."""
        return {t: tuple((str(k), int(v)) for k, v in sig) for t, sig in self.meta.get("sentences", {}).items()}

    @property
    def encoding(self):
        """The encoding the trainer used, or None when it was not written."""
        from core.behavior.encoding import encoding_from_json

        spec = self.meta.get("encoding")
        return None if spec is None else encoding_from_json(json.dumps(spec))


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def write_heldout_pairs(
    path: Path,
    *,
    version: str,
    iteration: int,
    d_heldout_auroc: float,
    encoding,
    sentences: Mapping[str, Sequence[tuple[str, int]]],
    pairs: Sequence[HeldoutPair],
) -> Path:
    """Write the file (atomically: a temp file renamed over it) and return its path."""
    from core.behavior.encoding import encoding_to_json

    try:
        spec = json.loads(encoding_to_json(encoding))
    except TypeError:  # a custom encoding: the pairs are still worth keeping
        spec = None
    meta = {
        "kind": "meta",
        "format": FORMAT,
        "version": version,
        "iteration": iteration,
        "measured": "the run's last held-out measurement (the last metrics row)",
        "d_heldout_auroc": _finite(d_heldout_auroc),
        "pairs": len(pairs),
        "encoding": spec,
        "sentences": {t: [[k, int(v)] for k, v in sig] for t, sig in sentences.items()},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(json.dumps(meta, sort_keys=True) + "\n")
        for p in pairs:
            row = {"kind": "pair", **asdict(p), "z_real": _finite(p.z_real), "z_swap": _finite(p.z_swap)}
            f.write(json.dumps(row, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_heldout_pairs(path: Path) -> HeldoutPairs:
    """The file ``write_heldout_pairs`` wrote; ValueError naming the file when it is not one."""
    path = Path(path)
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    if not lines or lines[0].get("kind") != "meta":
        raise ValueError(f"{path}: not a held-out pairs file (no meta line first)")
    names = set(HeldoutPair.__dataclass_fields__)
    pairs = []
    for row in lines[1:]:
        if row.get("kind") == "pair":
            values = {k: v for k, v in row.items() if k in names}
            values["z_real"] = math.nan if values.get("z_real") is None else float(values["z_real"])
            values["z_swap"] = math.nan if values.get("z_swap") is None else float(values["z_swap"])
            pairs.append(HeldoutPair(**values))
    return HeldoutPairs(meta=lines[0], pairs=pairs)
