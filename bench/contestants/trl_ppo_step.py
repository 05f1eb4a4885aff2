"""TRL PPOTrainer (trl==1.12.0, ``trl.experimental.ppo``) on the benchmark's sizes.

Runs in ``.venv-bench-ppo``. One step is TRL's own update loop body: sample ``batch_size``
answers of exactly ``new_tokens`` tokens, reference log-probs (LoRA adapter disabled), values
from the value model, scores from the reward model, KL-penalized rewards, GAE, then one PPO epoch
over one minibatch (policy LoRA + the whole value model, one backward), as RLHB's defaults.
The reward and value models are GPT-2 sequence classifiers of the same size as the policy,
built from the same random weights; the reward model is frozen, the value model is trained in
full (that is how TRL's PPO trains its critic).
"""

from __future__ import annotations

import sys
import tempfile

from common import StepTimer, emit, load_spec, setup_torch


def main() -> None:
    spec = load_spec()
    torch = setup_torch(spec)
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(spec.model_dir)
    tokenizer.padding_side = "left"  # TRL's PPO expects left-padded queries
    policy = AutoModelForCausalLM.from_pretrained(spec.model_dir, dtype=torch.float32)
    # TRL's PPO sets the policy's generation eos to stop_token_id (None here): answers are never cut short
    reward_model = AutoModelForSequenceClassification.from_pretrained(spec.model_dir, num_labels=1, dtype=torch.float32)
    value_model = AutoModelForSequenceClassification.from_pretrained(spec.model_dir, num_labels=1, dtype=torch.float32)
    for model in (reward_model, value_model):
        model.config.pad_token_id = tokenizer.pad_token_id

    prompts = [spec.prompts[i % len(spec.prompts)] for i in range(spec.prompts_per_step)]
    # k rollouts per prompt = each prompt repeated k times in the batch (TRL's PPO samples once per row)
    rows = [p for p in prompts for _ in range(spec.rollouts_per_prompt)]
    dataset = Dataset.from_dict({"input_ids": [tokenizer(p, add_special_tokens=False)["input_ids"] for p in rows]})
    prompt_tokens = sum(len(ids) for ids in dataset["input_ids"]) / len(dataset)

    total_steps = spec.warmup + spec.steps
    timer = StepTimer(warmup=spec.warmup)

    class TimeSteps(TrainerCallback):
        """A step runs from the end of the previous one (or the start of training) to on_step_end."""

        def on_train_begin(self, args, state, control, **kwargs):
            timer.start()

        def on_step_end(self, args, state, control, **kwargs):
            timer.mark()
            if state.global_step < total_steps:
                timer.start()

    with tempfile.TemporaryDirectory() as out:
        config = PPOConfig(
            output_dir=out,
            per_device_train_batch_size=spec.batch_size,
            gradient_accumulation_steps=1,
            num_mini_batches=1,
            num_ppo_epochs=1,
            total_episodes=total_steps * spec.batch_size,
            local_rollout_forward_batch_size=spec.batch_size,
            response_length=spec.new_tokens,
            stop_token=None,
            temperature=1.0,
            learning_rate=spec.learning_rate,
            kl_coef=0.05,
            cliprange=0.2,
            cliprange_value=0.2,
            gamma=1.0,
            lam=0.95,
            num_sample_generations=0,
            gradient_checkpointing=False,
            bf16=False,
            fp16=False,
            use_cpu=True,
            seed=spec.seed,
            report_to="none",
            logging_steps=10_000,
            save_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        lora = LoraConfig(
            r=spec.lora_r,
            lora_alpha=2 * spec.lora_r,
            lora_dropout=0.0,
            target_modules=list(spec.lora_targets),
            task_type="CAUSAL_LM",
        )
        trainer = PPOTrainer(
            args=config,
            processing_class=tokenizer,
            model=policy,
            ref_model=None,  # with peft: the reference is the policy with its adapter disabled
            reward_model=reward_model,
            value_model=value_model,
            train_dataset=dataset,
            eval_dataset=dataset,
            peft_config=lora,
            callbacks=[TimeSteps()],
        )
        lengths: list[int] = []
        base = trainer.model.policy.get_base_model()
        original_generate = base.generate

        def counting_generate(*args, **kwargs):
            out = original_generate(*args, **kwargs)
            lengths.append(out.sequences.shape[1] - kwargs["input_ids"].shape[1])
            return out

        base.generate = counting_generate
        trainer.train()

    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    emit(
        "trl_ppo",
        spec,
        timer,
        step_contents=(
            f"TRL {trl.__version__} PPOTrainer update: generate {spec.batch_size}x{spec.new_tokens} tokens (KV cache), "
            "reference forward (adapter disabled), value-model forward, reward-model forward, KL rewards, GAE, "
            "1 PPO epoch x 1 minibatch: policy(LoRA)+value-model forward/backward/step"
        ),
        trl=trl.__version__,
        prompt_tokens_mean=prompt_tokens,
        new_tokens_per_rollout=sorted(set(lengths)),
        trainable_parameters=trainable,
    )


if __name__ == "__main__":
    sys.exit(main())
