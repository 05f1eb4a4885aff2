"""TRL RLOOTrainer (latest trl) on the benchmark's sizes.

Runs in ``.venv-bench-rloo``. One step is one optimizer step of TRL's trainer: sample
``rollouts_per_prompt`` answers of exactly ``new_tokens`` tokens for each of ``prompts_per_step``
prompts, old and reference log-probs (reference = LoRA adapter disabled, KL beta 0.05), scores
from a GPT-2 reward model of the same size (frozen), leave-one-out advantages, then one
forward/backward/step of the policy LoRA over the whole batch. RLOO has no critic.
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
    from trl import RLOOConfig, RLOOTrainer

    tokenizer = AutoTokenizer.from_pretrained(spec.model_dir)
    tokenizer.padding_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(spec.model_dir, dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(spec.model_dir, num_labels=1, dtype=torch.float32)
    reward_model.config.pad_token_id = tokenizer.pad_token_id
    dataset = Dataset.from_dict({"prompt": list(spec.prompts)})
    prompt_tokens = sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in spec.prompts) / len(
        spec.prompts
    )

    total_steps = spec.warmup + spec.steps
    timer = StepTimer(warmup=spec.warmup)
    lengths: list[int] = []
    original_generate = policy.generate

    def counting_generate(*args, **kwargs):
        out = original_generate(*args, **kwargs)
        lengths.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    class TimeSteps(TrainerCallback):
        """A step runs from the end of the previous one (or the start of training) to on_step_end."""

        def on_train_begin(self, args, state, control, **kwargs):
            timer.start()

        def on_step_end(self, args, state, control, **kwargs):
            timer.mark()
            if state.global_step < total_steps:
                timer.start()

    with tempfile.TemporaryDirectory() as out:
        config = RLOOConfig(
            output_dir=out,
            per_device_train_batch_size=spec.batch_size,  # completions per step
            gradient_accumulation_steps=1,
            num_generations=spec.rollouts_per_prompt,
            max_completion_length=spec.new_tokens,
            # exactly new_tokens tokens: EOS cannot be sampled before the limit
            generation_kwargs={"min_new_tokens": spec.new_tokens},
            num_iterations=1,
            beta=0.05,
            temperature=1.0,
            learning_rate=spec.learning_rate,
            max_steps=total_steps,
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
        trainer = RLOOTrainer(
            model=policy,
            reward_funcs=reward_model,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            reward_processing_classes=tokenizer,
            peft_config=lora,
            callbacks=[TimeSteps()],
        )
        # generate() is called on the unwrapped peft model, which forwards to the base model's generate
        base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
        original_generate = base.generate
        base.generate = counting_generate
        trainer.train()

    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    emit(
        "trl_rloo",
        spec,
        timer,
        step_contents=(
            f"TRL {trl.__version__} RLOOTrainer optimizer step: generate {spec.batch_size}x{spec.new_tokens} tokens "
            "(KV cache), reference forward (adapter disabled), reward-model forward, leave-one-out advantages, "
            "policy(LoRA) forward/backward/step; no critic"
        ),
        trl=trl.__version__,
        prompt_tokens_mean=prompt_tokens,
        new_tokens_per_rollout=sorted(set(lengths)),
        trainable_parameters=trainable,
    )


if __name__ == "__main__":
    sys.exit(main())
