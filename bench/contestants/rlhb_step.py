"""This project's RLHB iteration (``trainer.algorithms.rlhb.RLHBTrainer.iteration``) on the
benchmark's sizes; runs in the project venv.

One step is one full RLHB iteration with the trainer's defaults except the sizes: sample 4
(query, behavior) prompts from the records, generate 4 x 32 tokens each (KV cache), actor and
reference (adapter disabled) log-probs, critic values, the contrastive discriminator reward
(D on b and on the opposite b), KL-penalized rewards, GAE, one PPO epoch on the actor (LoRA),
one on the critic (value head), one discriminator update (16 real vs 16 fake triplets), and
D's held-out accuracy. D is ``discriminator="lm"``: a second copy of the same GPT-2 with its
own LoRA (r=8) and a scalar head, the same size as TRL PPO's reward model.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from common import StepTimer, emit, load_spec, setup_torch


def main() -> None:
    spec = load_spec()
    setup_torch(spec)
    from trainer.algorithms.base import TrainRequest
    from trainer.algorithms.rlhb import RLHBTrainer
    from trainer.config import RLHBConfig
    from trainer.records import load_records

    config = RLHBConfig(
        batch_size=spec.batch_size,
        rollouts_per_prompt=spec.rollouts_per_prompt,
        max_new_tokens=spec.new_tokens,
        lora_r=spec.lora_r,
        lora_alpha=2 * spec.lora_r,
        lora_target_modules=tuple(spec.lora_targets),
        learning_rate=spec.learning_rate,
        discriminator="lm",
        d_lora_r=8,
        ppo_epochs=1,  # like the TRL contestants (num_ppo_epochs=1, num_mini_batches=1): the same work per step
        num_minibatches=1,
        threads=spec.threads,
    )
    total_steps = spec.warmup + spec.steps
    with tempfile.TemporaryDirectory() as out:
        request = TrainRequest(
            records=load_records(spec.records_path),
            model_path=spec.model_dir,
            output_root=Path(out),
            version_name="bench",
            seed=spec.seed,
            steps=total_steps,
            progress=False,
        )
        trainer = RLHBTrainer(request, config)
        timer = StepTimer(warmup=spec.warmup)
        rows = []
        for i in range(total_steps):
            timer.start()
            rows.append(trainer.iteration(i))
            timer.mark()

    timed_rows = rows[spec.warmup :]
    phases = {}
    for key in ("seconds_generate", "seconds_score", "seconds_update"):
        phases[key.removeprefix("seconds_")] = statistics.median(r[key] for r in timed_rows)
    phases["discriminator_and_heldout"] = statistics.median(
        t - r["seconds_generate"] - r["seconds_score"] - r["seconds_update"]
        for t, r in zip(timer.timed, timed_rows, strict=True)
    )
    trainable = sum(p.numel() for p in trainer.policy.actor_parameters() + trainer.policy.critic_parameters())
    trainable_d = sum(p.numel() for p in trainer.discriminator.parameters() if p.requires_grad)
    emit(
        "rlhb",
        spec,
        timer,
        step_contents=(
            f"RLHB iteration: generate {spec.batch_size}x{spec.new_tokens} tokens (KV cache), actor + reference "
            "(adapter disabled) forwards, critic values, contrastive D reward (2 D forwards), KL rewards, GAE, "
            "1 PPO epoch actor (LoRA) + 1 epoch critic (value head), 1 D update (16 real vs 16 fake, LoRA+head), "
            "D held-out accuracy"
        ),
        phase_seconds=phases,
        new_tokens_per_rollout=sorted({round(r["response_length"], 3) for r in rows}),
        prompt_tokens_mean=None,
        trainable_parameters=trainable + trainable_d,
        discriminator=config.discriminator,
    )


if __name__ == "__main__":
    sys.exit(main())
