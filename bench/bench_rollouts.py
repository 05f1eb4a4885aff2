"""Rollout sampling: the trainer's ``Policy.generate`` with each prompt's prefill shared by its rollouts,
against the same call prefilling every repeated row (issue 14 item 7: generation was 36-40 s of a ~52 s
demo PPO iteration).

One process, SmolLM2-135M-Instruct (unless --model), a LoRA moved off zero (merged for sampling, as in
training), the demo's PPO budget by default: 16 training questions x 4 rollouts x 48 new tokens under the
served sentence. The two ways take turns, ``--rounds`` times each after one warm-up of each, with the same
seed per round, so they sample the same answers (checked: a round whose answers differ is reported).
Prints JSON lines (``{"bench": "rollouts", ...}``), the last a summary with the median seconds per batch of
each and their ratio (shared / full; below 1 is faster). The machines are shared: also reports the load.

    .venv/bin/python bench/bench_rollouts.py [--rounds 5] [--prompts 16] [--rollouts 4] [--tokens 48]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="base model folder ('' = the prepared SmolLM2)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from core.behavior.encoding import most_preferred_sentence
    from core.model_prep import prepare_model
    from rlhb.queries import split_questions
    from trainer.config import PPOConfig
    from trainer.policy import Policy
    from trainer.rollouts import Prompt

    torch.set_num_threads(args.threads)
    model = args.model or str(prepare_model(log=lambda *_: None))
    policy = Policy.load(model, PPOConfig(max_new_tokens=args.tokens), device="cpu", dtype="float32")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.005)  # a trained-looking adapter: sampling runs it merged, as in a round
    served = most_preferred_sentence()
    prompts = [Prompt(q, served) for q in split_questions().train[: args.prompts]]
    shared_prefill = Policy._shared_prefill

    def sample(shared: bool, seed: int) -> tuple[float, list[str], int]:
        Policy._shared_prefill = shared_prefill if shared else (lambda self, ids, mask, k: {})
        try:
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            batch = policy.generate(prompts, args.rollouts)
            return time.perf_counter() - t0, batch.responses, int(batch.response_mask.sum())
        finally:
            Policy._shared_prefill = shared_prefill

    def say(**kw) -> None:
        print(json.dumps({"bench": "rollouts", **kw}), flush=True)

    sample(True, 0), sample(False, 0)  # warm-up
    times: dict[str, list[float]] = {"shared": [], "full": []}
    differing = 0
    for r in range(args.rounds):
        order = ("shared", "full") if r % 2 == 0 else ("full", "shared")
        answers = {}
        for way in order:
            seconds, answers[way], tokens = sample(way == "shared", 100 + r)
            times[way].append(seconds)
            say(round=r, way=way, seconds=round(seconds, 3), answer_tokens=tokens, load=os.getloadavg()[0])
        differing += answers["shared"] != answers["full"]
    shared, full = statistics.median(times["shared"]), statistics.median(times["full"])
    say(
        summary=True, rows=args.prompts * args.rollouts, new_tokens=args.tokens, prompt_share="per prompt",
        shared_median_s=round(shared, 3), full_median_s=round(full, 3), ratio=round(shared / full, 3),
        paired_ratios=[round(s / f, 3) for s, f in zip(times["shared"], times["full"], strict=True)],
        rounds_with_different_answers=differing, load=os.getloadavg()[0],
    )  # fmt: skip


if __name__ == "__main__":
    main()
