"""``rlhb demo``: the closed loop on one machine, through the real services, with simulated users.

The package follows the data flow: ``config`` (DemoConfig, presets, labels), ``lanes`` (one
algorithm's processes, traffic and waits), ``judging`` (held-out like rates), ``report`` and
``plot`` (the outputs), ``run`` (run_demo, the orchestration) and ``cli`` (the typer command).

What it does (one *lane* per algorithm, run one after the other):

1. Infrastructure: the embedded Kafka-protocol broker and Redis (the machine's, or an embedded
   valkey), shared by the lanes; each lane gets its own topics, Redis key prefix and adapter
   folder, and its own processes: ``rlhb api``, ``rlhb aggregator``, ``rlhb trainer``.
2. Base traffic (first lane): simulated users ask training questions through ``POST /v1/query``
   and react through ``POST /v1/feedback``; the aggregator turns the events into behavior
   records. The other lanes start from the same logged history: the first lane's records are
   replayed into their records topic (Kafka is the log; so all algorithms see the same data).
3. Base evaluation: every held-out question (never trained on) is answered by ``base``
   (``/v1/chat/completions`` with ``model="base"``) and judged by one simulated user who sends
   no feedback: an independent Bernoulli like per answer.
4. Rounds: ``POST /admin/train`` asks the trainer for a round with the lane's algorithm; the
   trainer trains, gates and publishes (or rejects) a version, the API hot-swaps it; the demo
   evaluates the new version on the held-out questions, then (unless it was the last round)
   sends more traffic, now served by the new version, for the next round to learn from. A
   candidate the gate rejects is never served; the demo generates its held-out answers itself
   from the adapter folder and judges them the same way, so its like rate is in the table too.
5. Report: like rate per version with Wilson 95% intervals, lift over base with a one-sided
   two-proportion z-test and Fisher's exact test, a power analysis, quality measures the
   trainer does not optimize (MiniLM relevance, repeated 3-grams, length, cut-offs), answers of
   base and final versions side by side, wall time per phase; a PNG of like rate, quality and
   training curves; ``report.json`` and ``report.md`` in the output folder.

Algorithms compared (``--algorithms``):

- ``rlhb``: PPO against the behavior-conditioned discriminator (the product's default).
- ``rlhbc``: PPO against the multi-head behavior classifier (eq. 1).
- ``rlhf`` as **direct-reward RL**: a reward model fitted directly to the logged shaped reward
  (likes - dislikes) / (views + clicks) -- pairwise Bradley-Terry over answers ranked by that
  reward (eq. 12) -- then the same PPO loop, KL and budget. It optimizes the users' reactions
  directly, without the behavior sentence; it is a labelled baseline. The simulated users'
  own like probability is never a reward: every algorithm sees only the logged events.

``--quick`` builds a tiny random model and runs every phase in about a minute (for tests).
"""

from __future__ import annotations

from rlhb.demo.cli import demo
from rlhb.demo.config import ALGORITHM_LABELS, DemoConfig, quick_config
from rlhb.demo.judging import VersionResult
from rlhb.demo.report import build_report, format_table
from rlhb.demo.run import run_demo

__all__ = [
    "ALGORITHM_LABELS",
    "DemoConfig",
    "VersionResult",
    "build_report",
    "demo",
    "format_table",
    "quick_config",
    "run_demo",
]
