"""An RLHB run writes D's held-out pairs (trainer.heldout_pairs): the pairs its last held-out measurement
used, with D's logits, so that the logged d_heldout_auroc can be recomputed and set against a ceiling."""

from __future__ import annotations

import json

import pytest

from core.behavior.encoding import encoding_to_json
from rlhb.evaluation.d_ceiling import auroc
from tests.helpers.toy_task import toy_records
from trainer.algorithms.base import TrainRequest
from trainer.algorithms.rlhb import Config, RLHBTrainer
from trainer.heldout_pairs import heldout_pairs_path, read_heldout_pairs
from trainer.records import BehaviorPool

TINY = dict(
    batch_size=4, rollouts_per_prompt=2, max_new_tokens=3, d_batch_size=4, heldout_max=8, lora_r=4,
    value_head_hidden=8, threads=1, discriminator="lm", d_lora_r=2, d_warmup_steps=2,
)  # fmt: skip


def test_the_last_heldout_measurement_is_written_pair_by_pair_and_its_auroc_recomputes(tiny_model_dir, tmp_path):
    metrics_dir = tmp_path / "trainer-metrics"
    path = heldout_pairs_path(metrics_dir, "v1")
    assert path == metrics_dir / "d-heldout" / "v1.jsonl"  # beside the metrics file, out of its *.jsonl glob
    request = TrainRequest(
        records=toy_records(40), model_path=str(tiny_model_dir), output_root=tmp_path / "versions",
        version_name="v1", steps=2, progress=False, metrics_path=metrics_dir / "v1.jsonl", heldout_pairs_path=path,
    )  # fmt: skip
    trainer = RLHBTrainer(request, Config(**TINY))
    trainer.run()

    rows = [json.loads(line) for line in (metrics_dir / "v1.jsonl").read_text().splitlines()]
    assert [p.name for p in metrics_dir.glob("*.jsonl")] == ["v1.jsonl"]
    dump = read_heldout_pairs(path)
    meta = dump.meta
    assert meta["kind"] == "meta" and meta["version"] == "v1" and meta["iteration"] == 1  # the run's last iteration
    assert meta["pairs"] == len(dump.pairs) == len(trainer.heldout_records) >= 2
    # the recomputed AUROC is the logged one (the last metrics row, the number reports show)
    recomputed = auroc([p.z_real for p in dump.pairs], [p.z_swap for p in dump.pairs])
    assert recomputed == pytest.approx(rows[-1]["d_heldout_auroc"], abs=1e-6)
    assert meta["d_heldout_auroc"] == pytest.approx(rows[-1]["d_heldout_auroc"], abs=1e-12)
    # each pair is a held-out record (split by query: no query D trained on) against its fixed swap
    train_queries = {r.query for r in trainer.train_records}
    for pair, record, swap in zip(dump.pairs, trainer.heldout_records, trainer.heldout_swaps, strict=True):
        assert pair.impression_id == record.impression_id and pair.query == record.query
        assert pair.answer == record.response and pair.real == record.behavior_text and pair.swap == swap
        assert pair.counts == record.counts and pair.query not in train_queries
        assert pair.swap in trainer.pool.swap_candidates(pair.real)
        assert isinstance(pair.z_real, float) and isinstance(pair.z_swap, float)
    # the pool and the encoding come back as the trainer had them: the same swap candidates
    assert encoding_to_json(dump.encoding) == encoding_to_json(trainer.pool.encoding)
    pool = BehaviorPool.from_signatures(dump.sentences, dump.encoding)
    assert pool.by_text == trainer.pool.by_text and pool.texts == trainer.pool.texts
    assert all(pool.swap_candidates(t) == trainer.pool.swap_candidates(t) for t in pool.texts)
    assert not list(path.parent.glob("*.tmp"))  # written atomically
