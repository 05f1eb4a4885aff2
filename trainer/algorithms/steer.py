"""Behavior-conditioned SFT before PPO: teach the policy what each behavior sentence means.

SteerLM (Dong et al. 2023, "attribute conditioned SFT", cited by the RLHB paper) fine-tunes on
every logged answer with its observed attributes in the prompt; at serving time one asks for the
attributes one wants. Here the attribute is the record's behavior sentence b:

    nll      = - sum_t log pi(a_t | s, b, a_<t) / |a|          over real records (s, a, b), every b alike
    contrast = - log sigmoid(beta * [log pi(a | s, b) - log pi(a | s, b_opp)])
    loss     = nll + contrast_weight * contrast

Why RLHB needs it at this scale: RLHB trains pi(a | s, b) by PPO on every record's own sentence
and serves the most preferred one, so the policy must learn what the sentence means from a few
hundred rollouts spread over all the logged sentences; in E5/E6/E8 (bench/demo_experiments.md)
the gap between the most and the least preferred sentence stayed within noise. The logged
records already pair answers with how users reacted to them.

The NLL alone did not make the sentence matter (E10: gap 0.000): the cheapest way to lower it is
to fit the answers, whatever the sentence. The contrast term is the part that reads the sentence:
it is a discriminator inside the policy (a logistic loss on how much likelier the logged answer is
under its own sentence than under the mirrored one, ``BehaviorPool.opposite``). Measured in E10
(beta 1.0): the same adapter answered 0.244 under the most preferred sentence and 0.068 under the
least (gap +0.176, p 6e-11; at beta 0.1 the margin hardly moved and the gap was -0.014), but the
gap came mostly from the least preferred side, since the contrast is met as well by worse answers
under the mirror as by better ones under the served sentence; PPO on D's reward afterwards erased it.
The loss itself is ``trainer.losses.behavior_contrast``.

Which records get the contrast (``RLHBConfig.steer_contrast_records``): on a disliked answer logged under
a low sentence, the contrast pushes that answer *down under the served sentence* (unlikelihood on the
served side; E10's repetition 0.036 -> 0.101). With "preferred" only records whose sentence is above its
mirror get it (``BehaviorPool.opposite_below``): under the served sentence answers are only pushed up.
E11: served 0.312 (+0.091 over base, p 0.003) vs least preferred 0.037, gap +0.276 (p 3e-22), every
guard under the served sentence at or better than base's.

Under torchrun (``trainer.distributed``) each rank draws its own batches from its per-rank rng and
the gradient hooks average the ranks' gradients: one backward per step on every rank, so the
ranks' adapters stay equal and the stage sees world_size x steer_batch_size records per step.

Off by default (``RLHBConfig.steer_steps`` 0: the paper has no such stage). Imitating every
record, positive and negative, rather than the liked ones is SteerLM's choice and is what makes
the sentence informative.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from schemas.behavior import BehaviorRecord
from trainer.algorithms.supervised import AdapterOptimizer, SupervisedConfig, answer_logprobs
from trainer.losses.behavior_contrast import behavior_contrast_loss
from trainer.policy import Policy
from trainer.rollouts import Prompt


def steer(
    policy: Policy,
    records: Sequence[BehaviorRecord],
    steps: int,
    learning_rate: float,
    batch_size: int,
    rng: random.Random,
    max_grad_norm: float = 1.0,
    contrast_weight: float = 0.0,
    beta: float = 1.0,
    opposite: Callable[[str], str | None] | None = None,
) -> list[dict[str, float]]:
    """``steps`` AdamW steps on the token-mean NLL of records' answers under their own sentences
    (shuffled passes, no example twice in a batch), plus ``contrast_weight`` times the
    behavior contrast (module docstring) against ``opposite(b)`` where one exists.
    Returns per-step ``steer_loss``, ``steer_nll``, ``steer_contrast``, ``steer_margin``, ``steer_grad_norm``."""
    examples = sorted({(r.query, r.behavior_text, r.response) for r in records})  # identical triplets once
    if steps <= 0 or not examples:
        return []
    # torch's AdamW default weight decay (0.01), as the stage was measured with in E10
    optimizer = AdapterOptimizer(
        policy, SupervisedConfig(learning_rate=learning_rate, weight_decay=0.01, max_grad_norm=max_grad_norm)
    )
    size = min(batch_size, len(examples))
    queue: list[int] = []
    history = []
    for _ in range(steps):
        if len(queue) < size:
            queue = list(range(len(examples)))
            rng.shuffle(queue)
        picks, queue = queue[:size], queue[size:]
        batch = [examples[i] for i in picks]
        own, lengths = answer_logprobs(policy, [Prompt(q, b) for q, b, _ in batch], [a for _, _, a in batch])  # (B,)
        nll = -own.sum() / lengths.sum()  # token-mean NLL over the batch
        loss, contrast, margin = nll, torch.zeros(()), 0.0
        mirrored = [(i, opposite(b)) for i, (_, b, _) in enumerate(batch)] if contrast_weight > 0 and opposite else []
        mirrored = [(i, o) for i, o in mirrored if o is not None and o != batch[i][1]]
        if mirrored:
            idx = torch.tensor([i for i, _ in mirrored])
            other, _ = answer_logprobs(
                policy, [Prompt(batch[i][0], o) for i, o in mirrored], [batch[i][2] for i, _ in mirrored]
            )  # (M,)
            delta = own[idx] - other  # (M,) log pi(a | s, b) - log pi(a | s, b_opp), summed over the answer
            contrast = behavior_contrast_loss(own[idx], other, beta)
            loss = nll + contrast_weight * contrast
            margin = float((delta.detach() / lengths[idx]).mean())
        norm = optimizer.step(loss, "steer loss")
        history.append(
            {
                "steer_loss": loss.item(),
                "steer_nll": nll.item(),
                "steer_contrast": float(contrast.detach()),
                "steer_margin": margin,
                "steer_grad_norm": float(norm),
            }
        )
    optimizer.optimizer.zero_grad(set_to_none=True)
    return history
