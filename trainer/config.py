"""Training configuration shared by every algorithm built on the PPO core.

``PPOConfig`` covers the policy (LoRA), sampling, the critic and the PPO update; each
algorithm's ``Config`` subclasses it and adds its own fields (``RLHBConfig`` adds the
discriminator). Every field has a one-line doc; ``__post_init__`` rejects bad values and
combinations with a message that says what to do (TRL style). No torch import here.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from core.settings import unknown_key_message

KL_ESTIMATORS = ("k1", "k2", "k3")
KL_REFERENCES = ("base", "start")
KL_PLACEMENTS = ("reward", "loss")
KL_LOSS_ESTIMATORS = ("k2", "k3")
DISCRIMINATOR_KINDS = ("minilm", "lm")
D_ANSWER_ENCODERS = ("minilm", "policy")
D_REWARD_KINDS = ("contrastive", "log_d", "prob", "logit")
KAPPA_SOURCES = ("records", "generations")
TRUNCATED_CUTS = ("head", "mid_sentence")
FINISH_PRIORS = ("always", "if_feedback_agrees")
ROLLOUT_BACKENDS = ("hf", "vllm")


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and what to do."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class PPOConfig:
    """Policy, sampling and PPO settings (defaults: the paper's 4 rollouts x 16 per batch)."""

    # --- policy (LoRA on the base causal LM)
    lora_r: int = 16
    """LoRA rank of the policy adapter."""
    lora_alpha: int = 32
    """LoRA alpha (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """LoRA dropout; 0 keeps rollout-time and update-time log-probs identical."""
    lora_target_modules: str | tuple[str, ...] = "all-linear"
    """Modules to adapt: "all-linear" (every linear layer but the LM head) or a tuple of module names."""
    value_head_hidden: int = 64
    """Width of the critic's MLP head over the policy's last hidden states (0 = a single linear layer)."""

    # --- sampling
    batch_size: int = 16
    """Rollouts per iteration (prompts per iteration = batch_size / rollouts_per_prompt)."""
    rollouts_per_prompt: int = 4
    """k: answers sampled per (query, behavior) prompt."""
    max_new_tokens: int = 48
    """Longest generated answer, in tokens (an answer also ends at EOS)."""
    max_prompt_tokens: int = 512
    """Prompts longer than this are cut from the left."""
    temperature: float = 1.0
    """Sampling temperature (1.0 = sample from the policy itself, as PPO assumes)."""
    top_k: int = 0
    """Top-k sampling filter (0 = off; filters bias the log-probs PPO uses)."""
    top_p: float = 1.0
    """Nucleus sampling filter (1.0 = off)."""
    rollout_backend: str = "hf"
    """Who samples the rollouts: "hf" (the policy's own generate, in this process) or "vllm" (vLLM servers with
    the current LoRA loaded under a fresh name each iteration: TRL's vLLM server mode; trainer/vllm_rollouts.py).
    Either way the PPO update recomputes every log-prob with the policy itself."""
    vllm_urls: str = ""
    """With rollout_backend="vllm": the vLLM servers' base URLs, comma-separated (started with --enable-lora,
    --max-lora-rank >= lora_r and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True); rollouts are split across them."""
    vllm_lora_dir: str = ""
    """With rollout_backend="vllm": a folder the trainer writes the current LoRA to and every vLLM server reads at
    the same path (a shared volume)."""
    vllm_timeout_s: float = 300.0
    """With rollout_backend="vllm": seconds one vLLM request may take."""

    # --- rewards and advantages
    kl_coef: float = 0.05
    """eta in eq. 10: weight of the per-token KL to the reference policy (see kl_reference)."""
    kl_reference: str = "base"
    """The reference policy of the KL term: "base" (the base model, adapter disabled: the paper's pi_ref, the
    initial policy) or "start" (a frozen copy of the adapter as it stands when the first rollout of the round is
    sampled: the parent a continual round starts from, after any steering stage). With "base", a policy that
    steering or earlier rounds moved far from the base pays that distance as KL at every token of every rollout
    (E11: 14 nats per answer at iteration 0), so the penalty pulls back toward the base, not toward what the
    earlier training taught; "start" makes each round a trust-region step from where it began (as RLHF's
    reference is the SFT model rather than the pretrained one). Not with an FSDP-sharded base."""
    kl_estimator: str = "k1"
    """Per-token KL estimator: k1 (log ratio), k2, k3. With kl_placement="loss" only k2 or k3 (k1's gradient is
    0 in expectation; trainer/losses/kl.py)."""
    kl_placement: str = "reward"
    """Where the KL term acts: "reward" (eq. 10: -kl_coef x KL on every token's reward, summed by GAE, so a
    shorter answer pays less: a prior toward brevity, bench/demo_experiments.md E34/E36) or "loss" (GRPO, verl's
    use_kl_loss: kl_coef x the mean per-token KL estimate added to the actor's loss; the reward is the score
    alone, and nothing pays for stopping early). In the loss the term meets whitened advantages, not raw rewards,
    so the same kl_coef weighs differently: logged ``score_std`` says by how much. Either way ``kl`` logs the
    kl_estimator's estimate summed over each answer's tokens, and ``kl_loss`` (with "loss") the term's per-token
    mean."""
    adaptive_kl: bool = False
    """Adapt kl_coef each iteration toward kl_target (Ziegler et al. 2019, TRL's AdaptiveKLController); kl_coef is
    then the starting value. Off = the paper's constant eta."""
    kl_target: float = 6.0
    """With adaptive_kl: the KL to the reference per answer (summed over its tokens) to steer toward (TRL: 6)."""
    kl_horizon: int = 10000
    """With adaptive_kl: rollouts over which the KL error is corrected; each iteration moves kl_coef by at most
    20% x batch_size / kl_horizon (TRL: 10000)."""
    score_clip: float | None = 10.0
    """Clip sequence scores to [-score_clip, score_clip] before PPO (None = no clipping)."""
    missing_eos_penalty: float = 0.0
    """Subtracted from the score of every rollout that ran to ``max_new_tokens`` without an end-of-sequence token
    (TRL's ``missing_eos_penalty``): served with the same budget, that answer is cut off mid-sentence, which users
    dislike whatever they prefer. A learned reward can miss it: E19's example-users round sent every rollout to
    the cap by iteration 5 with a D that ranked real answers stopped mid-sentence below whole ones 95% of the
    time. ``missing_eos_share`` (logged every iteration) is the share of rollouts it hits. 0 = off (the paper)."""
    short_answer_penalty: float = 0.0
    """Subtracted from the score of every rollout with fewer than ``short_answer_words`` words: the other end of
    ``missing_eos_penalty``. A learned reward that pays for finishing early can overshoot into answers such as
    "No." or "Yes, I can.", which the guards count as near-empty (bench/demo_experiments.md E21 thorough, E23 example
    seed 1, E24 thorough: near-empty answers 0.6-2.3% -> 5-7%, each time after PPO). ``short_answer_share``
    (logged every iteration) is the share of rollouts it hits. Some questions deserve a one-word answer, so it is
    off by default (0 = the paper). Measured at 1 in E25 (example seed 1, thorough): it hit 2 and 5 of 384
    rollouts, so those runs do not show it helps; the near-empty answers of E21/E23 came with shorter rollouts."""
    short_answer_words: int = 4
    """With ``short_answer_penalty``: rollouts with fewer words than this lose it (4: the report's near-empty guard,
    ``rlhb.evaluation.quality.NEAR_EMPTY_WORDS``)."""
    repeated_ngram_penalty: float = 0.0
    """Subtracted from every rollout's score times its share of repeated word 3-grams (0 to 1, the report's and the
    gate's repetition measure, ``core.text_measures.repeated_ngram_rate``): an answer that says its sentence twice
    ("I am sad and angry at the same time. I was sad and angry at the same time.", rate 0.33) loses 0.33 x this. A
    learned reward can pay for repetition: on users who like answers of several sentences a round learned to say
    one sentence twice (bench/demo_experiments.md E25 thorough: repetitive answers 3 -> 15 of 176). Logged every
    iteration as ``rollout_repetition`` (the batch's mean rate, whatever the penalty). The penalty and the guards
    share the measure, so the guards then check what the reward was told; the users' own verdicts and relevance
    stay independent. Measured at 4 in E26 (thorough, seed 0): repeated 3-grams -53% and -60% against base in two
    runs, but near-empty answers rose to 6.2% in the first; one run each, so off by default (0 = the paper)."""
    center_scores: bool = False
    """Subtract the round's first batch's mean score (after the penalties above) from every score of the round,
    as Ziegler et al. 2019 normalize the reward to mean 0 on the starting policy's samples. Why: the critic starts
    near 0, and a reward that is far from 0 on average (D's log-probabilities are about -4) then reaches a token
    through GAE's lambda^(distance to the end): a long rollout's early tokens see little of a negative score, the
    last token of a short one sees all of it, so whitened advantages favour going on over stopping until the
    critic catches up (bench/demo_experiments.md E20: about 10 iterations, by which time every rollout ran to the
    budget). Centered, the critic's start is right on average. Only the mean is moved: kl_coef and
    missing_eos_penalty keep their units. Logged as ``score_offset``. Off = the paper."""
    gamma: float = 1.0
    """Discount factor (eq. 7-8)."""
    lam: float = 0.95
    """GAE lambda (eq. 7)."""
    whiten_advantages: bool = True
    """Normalize advantages over the batch's real tokens."""

    # --- PPO update
    ppo_epochs: int = 2
    """Passes over the rollouts per iteration, for the actor and then for the critic. With 1 epoch over 1 minibatch
    the PPO ratio is always 1: the clip (eq. 5) never acts and PPO is a plain policy gradient. CleanRL and TRL use 4
    epochs x 4 minibatches; on 2 CPU cores that made the update 5-7x slower than 1 x 1, while 2 x 2 (2.3x) already
    lets the clip act (clip fraction 0.04-0.17 per iteration with SmolLM2, bench/demo_experiments.md E5)."""
    num_minibatches: int = 2
    """Minibatches per epoch when minibatch_size is 0 (CleanRL: 4); must divide batch_size."""
    minibatch_size: int = 0
    """Rollouts per gradient step (0 = batch_size / num_minibatches); must divide batch_size."""
    target_kl: float | None = None
    """Stop the actor's epochs early once an epoch's mean approx_kl (k3, pi_old vs pi) exceeds this (CleanRL; None =
    off). Typical: 0.01-0.05."""
    clip_range: float = 0.2
    """epsilon of the clipped surrogate (eq. 5)."""
    clip_range_value: float | None = 0.2
    """Critic value clipping around the rollout-time values (None = off)."""
    learning_rate: float = 3e-4
    """Actor (LoRA) learning rate."""
    critic_learning_rate: float = 1e-3
    """Critic (value head) learning rate."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip for actor and critic (0 = off)."""
    entropy_coef: float = 0.0
    """Entropy bonus weight (the paper has none)."""
    threads: int = 0
    """torch intra-op threads (0 = leave torch's default)."""

    def __post_init__(self) -> None:
        _require(self.lora_r >= 1, f"lora_r must be >= 1; got {self.lora_r}. Use 8-64.")
        _require(
            self.lora_alpha >= 1,
            f"lora_alpha must be >= 1; got {self.lora_alpha}. A common choice is 2 * lora_r.",
        )
        _require(0.0 <= self.lora_dropout < 1.0, f"lora_dropout must be in [0, 1); got {self.lora_dropout}.")
        if not isinstance(self.lora_target_modules, str):
            self.lora_target_modules = tuple(self.lora_target_modules)
            _require(bool(self.lora_target_modules), 'lora_target_modules is empty: name modules or use "all-linear".')
        _require(self.value_head_hidden >= 0, f"value_head_hidden must be >= 0; got {self.value_head_hidden}.")
        _require(self.rollouts_per_prompt >= 1, f"rollouts_per_prompt must be >= 1; got {self.rollouts_per_prompt}.")
        suggestion = max(1, self.batch_size // self.rollouts_per_prompt) * self.rollouts_per_prompt
        _require(
            self.batch_size >= self.rollouts_per_prompt and self.batch_size % self.rollouts_per_prompt == 0,
            f"batch_size ({self.batch_size}) must be a positive multiple of rollouts_per_prompt "
            f"({self.rollouts_per_prompt}): e.g. batch_size={suggestion}.",
        )
        _require(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1; got {self.max_new_tokens}.")
        _require(self.max_prompt_tokens >= 8, f"max_prompt_tokens must be >= 8; got {self.max_prompt_tokens}.")
        _require(self.temperature > 0, f"temperature must be > 0; got {self.temperature}. Use 1.0 for on-policy PPO.")
        _require(self.top_k >= 0, f"top_k must be >= 0 (0 = off); got {self.top_k}.")
        _require(0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1]; got {self.top_p}.")
        _require(
            self.rollout_backend in ROLLOUT_BACKENDS,
            f"rollout_backend must be one of {ROLLOUT_BACKENDS}; got {self.rollout_backend!r}.",
        )
        if self.rollout_backend == "vllm":
            urls = [u.strip() for u in self.vllm_urls.split(",") if u.strip()]
            _require(
                bool(urls) and all(u.startswith(("http://", "https://")) for u in urls),
                f'rollout_backend="vllm" needs vllm_urls, http(s) base URLs separated by commas (e.g. '
                f'"http://vllm:8000"); got {self.vllm_urls!r}.',
            )
            _require(
                bool(self.vllm_lora_dir),
                'rollout_backend="vllm" needs vllm_lora_dir: a folder shared with the vLLM servers at the same path.',
            )
        _require(self.vllm_timeout_s > 0, f"vllm_timeout_s must be > 0; got {self.vllm_timeout_s}.")
        _require(self.kl_coef >= 0, f"kl_coef must be >= 0; got {self.kl_coef}. Typical: 0.01-0.1.")
        _require(
            self.kl_reference in KL_REFERENCES,
            f"kl_reference must be one of {KL_REFERENCES}; got {self.kl_reference!r}. 'base' is the paper's.",
        )
        _require(
            self.kl_estimator in KL_ESTIMATORS,
            f"kl_estimator must be one of {KL_ESTIMATORS}; got {self.kl_estimator!r}.",
        )
        _require(
            self.kl_placement in KL_PLACEMENTS,
            f"kl_placement must be one of {KL_PLACEMENTS}; got {self.kl_placement!r}. 'reward' is the paper's eq. 10.",
        )
        _require(
            self.kl_placement == "reward" or self.kl_estimator in KL_LOSS_ESTIMATORS,
            f'kl_placement="loss" needs kl_estimator in {KL_LOSS_ESTIMATORS}; got {self.kl_estimator!r}: as a loss, '
            "k1's gradient is zero in expectation. Use k2 (its expected gradient is that of KL(pi || pi_ref)) or k3 "
            "(GRPO's).",
        )
        _require(
            self.score_clip is None or self.score_clip > 0,
            f"score_clip must be > 0 or None; got {self.score_clip}.",
        )
        _require(
            self.missing_eos_penalty >= 0,
            f"missing_eos_penalty must be >= 0 (it is subtracted); got {self.missing_eos_penalty}.",
        )
        _require(
            self.short_answer_penalty >= 0,
            f"short_answer_penalty must be >= 0 (it is subtracted); got {self.short_answer_penalty}.",
        )
        _require(self.short_answer_words >= 1, f"short_answer_words must be >= 1; got {self.short_answer_words}.")
        _require(
            self.repeated_ngram_penalty >= 0,
            f"repeated_ngram_penalty must be >= 0 (it is subtracted); got {self.repeated_ngram_penalty}.",
        )
        _require(0.0 <= self.gamma <= 1.0, f"gamma must be in [0, 1]; got {self.gamma}.")
        _require(0.0 <= self.lam <= 1.0, f"lam must be in [0, 1]; got {self.lam}.")
        _require(self.kl_target > 0, f"kl_target must be > 0; got {self.kl_target}. TRL uses 6 (nats per answer).")
        _require(
            self.kl_horizon >= self.batch_size,
            f"kl_horizon ({self.kl_horizon}) must be >= batch_size ({self.batch_size}), or one iteration could more "
            "than flip kl_coef; TRL uses 10000.",
        )
        _require(self.ppo_epochs >= 1, f"ppo_epochs must be >= 1; got {self.ppo_epochs}.")
        divisors = [d for d in range(1, self.batch_size + 1) if self.batch_size % d == 0]
        if self.minibatch_size == 0:
            _require(
                self.num_minibatches in divisors,
                f"num_minibatches ({self.num_minibatches}) must divide batch_size ({self.batch_size}): one of "
                f"{divisors}, or set minibatch_size instead.",
            )
        else:
            _require(
                self.minibatch_size in divisors,
                f"minibatch_size ({self.minibatch_size}) must divide batch_size ({self.batch_size}) so every "
                f"minibatch has the same size: one of {divisors}, or 0 for batch_size / num_minibatches.",
            )
        _require(
            self.target_kl is None or self.target_kl > 0,
            f"target_kl must be > 0 or None (off); got {self.target_kl}. Typical: 0.01-0.05.",
        )
        _require(0 < self.clip_range < 1, f"clip_range must be in (0, 1); got {self.clip_range}. Typical: 0.2.")
        _require(
            self.clip_range_value is None or self.clip_range_value > 0,
            f"clip_range_value must be > 0 or None; got {self.clip_range_value}.",
        )
        for name in ("learning_rate", "critic_learning_rate"):
            value = getattr(self, name)
            _require(0 < value < 1, f"{name} must be in (0, 1); got {value}. LoRA usually wants 1e-5 to 1e-3.")
        _require(self.max_grad_norm >= 0, f"max_grad_norm must be >= 0 (0 = off); got {self.max_grad_norm}.")
        _require(self.entropy_coef >= 0, f"entropy_coef must be >= 0; got {self.entropy_coef}.")
        _require(self.threads >= 0, f"threads must be >= 0; got {self.threads}.")

    @property
    def prompts_per_batch(self) -> int:
        """Distinct (query, behavior) prompts per iteration."""
        return self.batch_size // self.rollouts_per_prompt

    @property
    def effective_minibatch(self) -> int:
        """Rollouts per gradient step."""
        return self.minibatch_size or self.batch_size // self.num_minibatches

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass
class RLHBConfig(PPOConfig):
    """PPO with a behavior-conditioned discriminator D(s, a; b) as the reward (RLHB)."""

    discriminator: str = "minilm"
    """D architecture: "minilm" (factorized fine-tuned MiniLM) or "lm" (base LM + own LoRA + scalar head)."""
    d_model_path: str = ""
    """For discriminator="lm" (and d_answer_encoder="policy"): the LM to build D on ("" = the policy's base model,
    loaded as a separate copy)."""
    d_lora_r: int = 8
    """LoRA rank of D's adapter (discriminator="lm")."""
    d_embed_dim: int = 64
    """Width of the bilinear projection <P f(s, a), Q e(b)> (discriminator="minilm")."""
    d_max_tokens: int = 256
    """Longest D input, in tokens (cut from the left for "lm" and for d_answer_encoder="policy", the right for the
    MiniLM encoder)."""
    d_learning_rate: float = 5e-5
    """D's learning rate (encoder / adapter)."""
    d_head_learning_rate: float = 1e-3
    """Learning rate of D's freshly initialized head (projections, scalar head)."""
    d_freeze_encoder: bool = False
    """discriminator="minilm" only: keep the encoder f(s, a) as shipped and train the bilinear head alone.
    f is then a fixed function of the (question, answer) text, so each pair is encoded once and cached:
    a warm-up step costs a head update instead of an encoder backward (issue 14 item 7's "frozen encoder
    features cached, a trained head"). bench/demo_experiments.md E16: about the fine-tuned D's held-out AUROC at
    4% of its warm-up time, but in the loop its reward was ~10x smaller and the round did not lift: off by default."""
    d_answer_encoder: str = "minilm"
    """discriminator="minilm" only: what reads the (question, answer) pair in f(s, a). "minilm" (the shipped
    all-MiniLM-L6-v2, mean-pooled; fine-tuned unless d_freeze_encoder) or "policy": the policy's base LM (or
    d_model_path), frozen, its final hidden state at the end of the chat-templated exchange, each pair encoded once
    and cached (``trainer.discriminator.FrozenLMAnswerFeatures``); only the head trains. A causal LM's last
    position has read every token before it, so it can carry how long and how complete an answer is, which mean
    pooling averages away: the MiniLM D stayed at chance on users who like thorough answers whatever else changed
    (bench/demo_experiments.md E29, E32). The paper's D is the LM itself (discriminator="lm", a LoRA trained
    through the trunk: ~100 s per step on 2 CPU cores, E9); this is its CPU-sized cousin. Offline on E29's
    thorough answers (E38): held-out AUROC 0.620 [0.52, 0.72] vs MiniLM's 0.515, reward Spearman with the users' like
    probability 0.56. Through the services (one seed each): thorough users at 96 tokens +0.102 with every guard
    clean, though D was at chance in the loop (E39); concise users +0.261 but near-empty answers 1 -> 13 of 176,
    where D did read the taste and PPO followed it to 11-word answers (E41). So off by default."""
    d_text_features: bool = False
    """discriminator="minilm" only: add the plain statistics of the answer that the publication gate guards
    to f(s, a) (its length in words, whether it ends where a sentence can end, its repeated 3-grams, whether it
    opens as a refusal; ``trainer.discriminator.answer_statistics``), each behavior sentence weighting them its
    own way. Mean pooling keeps what an answer is about and loses how long and how finished it is, which users
    react to whatever their taste; the bilinear form learns the direction from the feedback (the same
    statistics can mean "shorter" to one population and "longer" to another). Off by default: offline on thorough
    users' answers it did not lift D's held-out AUROC (bench/demo_experiments.md E29: 0.524 vs 0.515)."""
    d_batch_size: int = 16
    """Real triplets per D update; the fake batch has the same size."""
    d_updates_per_iteration: int = 1
    """D gradient steps per RLHB iteration (after the actor and critic)."""
    d_warmup_steps: int = 0
    """D gradient steps on real vs behavior-swapped triplets before the first PPO iteration."""
    d_frozen: bool = False
    """Freeze D during PPO (the paper's ablation; warm-up still trains it)."""
    preferred_prompt_share: float = 0.0
    """Share of PPO prompts whose behavior is the most preferred logged sentence (the one the server
    puts in its prompts) instead of the sampled record's own. 0 = the paper (every prompt's behavior
    from a record: the policy learns every behavior, the served one in ~30% of its updates). The demo
    uses 1.0: D still judges answers under their behavior, but PPO spends its small CPU budget on the
    sentence that is served (bench/demo_experiments.md E2/E3: 0.5 gave +0.03, 1.0 gave +0.23)."""
    steer_steps: int = 0
    """Behavior-conditioned SFT steps before D's warm-up (SteerLM; ``trainer.algorithms.steer``): the policy
    imitates every training record's answer under that record's own sentence, so it knows what each
    sentence predicts before PPO starts. 0 = the paper (no such stage)."""
    steer_learning_rate: float = 3e-4
    """AdamW learning rate of those steps (the policy's LoRA)."""
    steer_batch_size: int = 8
    """Records per steer step."""
    steer_contrast: float = 1.0
    """Weight of the behavior contrast in those steps: -log sigmoid(beta * [log pi(a|s,b) - log pi(a|s,b_opp)]),
    which makes the sentence matter (the NLL alone did not: bench/demo_experiments.md E10). 0 = plain SteerLM."""
    steer_beta: float = 1.0
    """beta of the contrast (as in DPO: the scale of the summed log-prob difference). E10: at 0.1 (DPO's usual
    value) the margin hardly moved in 120 steps and the gap was -0.014; at 1.0 the gap was +0.176."""
    steer_contrast_records: str = "preferred"
    """Which records get the contrast: "preferred", only records whose sentence is more preferred than its
    mirror, or "all" (E10). With "all", a disliked answer logged under a low sentence is pushed *down* under
    the served sentence (unlikelihood on the served side; E10: repetition 0.036 -> 0.101, served lift +0.023
    n.s.); with "preferred" the served sentence only ever has answers pushed up and the mirror takes the push
    down (E11, concise: served +0.091, p 0.003, gap +0.276, every guard at or better than base)."""
    swap_share: float = 0.3
    """Share of the fake batch made of behavior-swapped real triplets (the rest: kappa, then fresh generations;
    with the defaults half the fake batch is this iteration's rollouts)."""
    d_answer_swap_share: float = 0.0
    """Share of the swapped fakes (``swap_share``, and all of the warm-up's fakes) whose *answer* is swapped
    instead of their sentence: (s, a', b) with a' another training record's answer to the same question s, logged
    under a sentence that differs from b in preference; a record with no such sibling gets a behavior swap. The
    behavior swap makes D rank sentences under one answer, and a sentence the pool rarely holds is then a fake
    more often than not (the swap draws sentences uniformly), so D can score well by counting sentences. PPO's
    reward asks the other question: which answer to this question suits this sentence. The answer swap puts that
    question in D's loss, with the question and sentence the same on both sides, so only the answer tells them
    apart (both directions together, as in CLIP's symmetric matching loss). It needs questions asked more than
    once, which live traffic gives. 0 = behavior swaps only, as before. Off by default: offline on thorough users'
    answers it left D at chance like the behavior swap alone (bench/demo_experiments.md E32)."""
    kappa: float = 0.2
    """Bootstrap share of the fake batch (section 4.3; the paper: 50% makes D collapse). What fills it:
    ``kappa_source``."""
    kappa_source: str = "records"
    """"records": real logged triplets with the highest shaped rewards, labelled fake -- the paper's "highly-rewarded
    demonstrations as fake-real data", a brake on D's confidence exactly where the policy should go (and why 50%
    collapses D: half its fakes are then real). "generations": the highest-rewarded rollouts so far (an earlier
    reading; those are fakes anyway, so it is a replay of the policy's best, not a brake)."""
    d_truncated_share: float = 0.0
    """Share of D's fake batch made of truncated real answers: a training record's answer cut as ``d_truncated_cut``
    says (by default to its first k <= ``d_truncated_max_words`` words), under the sentence a PPO prompt would carry
    (the served one with probability ``preferred_prompt_share``, else the record's own). These are the fakes an
    adversarial D would get from a policy that collapsed to near-empty answers, given ahead of time: a frozen D
    never sees such answers and its score on them is extrapolation, which PPO found (near-empty answers x3-x10 in
    every frozen-D run, bench/demo_experiments.md E14-E17). Alone, under the contrastive reward, it makes the reward
    prefer cut answers *more* (E18: 0.73 -> 0.97 of held-out records; the contrast cancels realness): pair it with
    ``reward_realness_weight`` (E18, both: 0.05). 0 = the paper."""
    d_truncated_max_words: int = 8
    """Longest prefix (in words) a truncated fake keeps (``d_truncated_cut="head"``)."""
    d_truncated_cut: str = "head"
    """How a truncated fake is cut. "head": to its first k <= ``d_truncated_max_words`` words (a near-empty
    answer). "mid_sentence": after any word that does not end a sentence, at any length (an answer that
    stops mid-sentence, which is also what an answer cut at the token cap looks like). "head" teaches D
    "short is fake", and with the realness term PPO then ran answers to the cap (E18, example users: 95% cut
    off); "mid_sentence" puts the fault where users see it, in the unfinished ending, whatever the length."""
    d_label_smoothing: float = 0.0
    """One-sided label smoothing: D trains reals toward 1 - this (Salimans et al. 2016). 0 = the paper."""
    d_replay_size: int = 0
    """Reservoir of earlier generations kept for D (0: off). Replaying older rollouts keeps D from forgetting
    what the policy did a few iterations ago and chasing only its latest answers."""
    d_replay_share: float = 0.5
    """With a replay reservoir: share of the generated part of the fake batch drawn from it."""
    d_adversarial_lr_scale: float = 1.0
    """D's learning rates during PPO, as a share of the warm-up ones (1: the same). Below 1 D keeps
    what it learned about behaviors from the logs while it adapts to the policy's answers; at full rate
    the adversarial updates dragged its real-vs-swapped accuracy to chance (bench/demo_experiments.md)."""
    d_max_acc: float = 1.0
    """Skip a D step when D already classifies this step's batch better than this (1.0: never skip). Keeps D
    from overpowering the policy (its reward then saturates and PPO gets no gradient)."""
    reward: str = "contrastive"
    """Reward from D: "contrastive" z(s,a;b) - z(s,a;opposite b), or raw "log_d" (eq. 2), "prob", "logit"."""
    reward_realness_weight: float = 0.0
    """With reward="contrastive": add this times log D(s, a; b) (eq. 2) to the contrast. The contrast cancels
    the part of z that does not depend on b, i.e. whether the answer looks real at all, so an answer D finds
    unreal under every sentence (cut to a few words, say) is judged only on an extrapolated preference
    direction; this term puts realness back. 0 = the contrast alone."""
    finish_priors: str = "always"
    """Whether the "finish the answer" priors apply: ``missing_eos_penalty``, ``d_truncated_share`` (the cut
    fakes) and ``reward_realness_weight`` (log D, which carries them to the policy). "always": as configured.
    "if_feedback_agrees": only when the round's training records show that answers stopping mid-sentence got
    a significantly lower shaped reward than finished ones (``trainer.finish_evidence``: Welch's one-sided t-test at
    ``finish_priors_alpha``); otherwise all three are set to 0 for the round. Why: these priors push every
    population toward finished (at a tight token budget, shorter) answers whatever its feedback says; on
    inverted feedback the lane that carries them lifted the real users anyway (bench/demo_experiments.md E31),
    so its lifts could not be credited to the feedback. The decision and its numbers are logged and in the
    first metrics row (``finish_priors_on``, ``finish_reward_gap``, ``finish_t``, ``finish_p``)."""
    finish_priors_alpha: float = 0.05
    """With finish_priors="if_feedback_agrees": the one-sided significance level of the records' test."""
    heldout_fraction: float = 0.2
    """Share of records held out to measure D's accuracy on real vs swapped (never trained on)."""
    heldout_max: int = 64
    """Cap on held-out records (each gives one real and one swapped triplet)."""
    chance_margin: float = 0.05
    """D counts as "at chance" when its held-out accuracy is within this of 0.5: PPO then logs a loud warning."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            self.discriminator in DISCRIMINATOR_KINDS,
            f"discriminator must be one of {DISCRIMINATOR_KINDS}; got {self.discriminator!r}.",
        )
        _require(self.reward in D_REWARD_KINDS, f"reward must be one of {D_REWARD_KINDS}; got {self.reward!r}.")
        _require(
            self.reward_realness_weight >= 0, f"reward_realness_weight must be >= 0; got {self.reward_realness_weight}."
        )
        _require(
            self.reward_realness_weight == 0 or self.reward == "contrastive",
            f"reward_realness_weight adds log D to the contrast; with reward={self.reward!r} D's realness is the "
            "reward already: unset it.",
        )
        _require(
            not (self.d_text_features and self.discriminator != "minilm"),
            f'd_text_features applies to discriminator="minilm"; the {self.discriminator!r} D reads the whole '
            "answer in its trunk: unset it.",
        )
        _require(
            self.d_answer_encoder in D_ANSWER_ENCODERS,
            f"d_answer_encoder must be one of {D_ANSWER_ENCODERS}; got {self.d_answer_encoder!r}.",
        )
        _require(
            self.d_answer_encoder == "minilm" or self.discriminator == "minilm",
            f'd_answer_encoder="{self.d_answer_encoder}" sets f(s, a) of the factorized D (discriminator="minilm"); '
            f"the {self.discriminator!r} D reads the answer in its own trunk: unset it.",
        )
        _require(
            not (self.d_freeze_encoder and self.discriminator != "minilm"),
            f'd_freeze_encoder applies to discriminator="minilm" (a cached f(s, a)); the {self.discriminator!r} D '
            "reads the behavior sentence in its trunk, so there is nothing behavior-free to cache: unset it.",
        )
        _require(self.d_lora_r >= 1, f"d_lora_r must be >= 1; got {self.d_lora_r}.")
        _require(self.d_embed_dim >= 1, f"d_embed_dim must be >= 1; got {self.d_embed_dim}.")
        _require(self.d_max_tokens >= 16, f"d_max_tokens must be >= 16; got {self.d_max_tokens}.")
        for name in ("d_learning_rate", "d_head_learning_rate"):
            value = getattr(self, name)
            _require(0 < value < 1, f"{name} must be in (0, 1); got {value}.")
        _require(self.d_batch_size >= 2, f"d_batch_size must be >= 2; got {self.d_batch_size}.")
        _require(
            self.d_updates_per_iteration >= 0,
            f"d_updates_per_iteration must be >= 0; got {self.d_updates_per_iteration}.",
        )
        _require(self.d_warmup_steps >= 0, f"d_warmup_steps must be >= 0; got {self.d_warmup_steps}.")
        _require(
            0.0 <= self.preferred_prompt_share <= 1.0,
            f"preferred_prompt_share must be in [0, 1]; got {self.preferred_prompt_share}.",
        )
        _require(self.steer_steps >= 0, f"steer_steps must be >= 0; got {self.steer_steps} (0 turns the stage off).")
        _require(
            0 < self.steer_learning_rate < 1,
            f"steer_learning_rate must be in (0, 1); got {self.steer_learning_rate}. LoRA wants 1e-5 to 1e-3.",
        )
        _require(self.steer_batch_size >= 1, f"steer_batch_size must be >= 1; got {self.steer_batch_size}.")
        _require(self.steer_contrast >= 0, f"steer_contrast must be >= 0; got {self.steer_contrast}.")
        _require(self.steer_beta > 0, f"steer_beta must be > 0; got {self.steer_beta}.")
        _require(
            self.steer_contrast_records in ("all", "preferred"),
            f"steer_contrast_records must be 'all' or 'preferred'; got {self.steer_contrast_records!r}.",
        )
        _require(0.0 <= self.swap_share <= 1.0, f"swap_share must be in [0, 1]; got {self.swap_share}.")
        _require(
            0.0 <= self.d_answer_swap_share <= 1.0,
            f"d_answer_swap_share must be in [0, 1]; got {self.d_answer_swap_share}.",
        )
        _require(
            self.kappa_source in KAPPA_SOURCES,
            f"kappa_source must be one of {KAPPA_SOURCES}; got {self.kappa_source!r}.",
        )
        _require(
            0.0 <= self.d_label_smoothing < 0.5,
            f"d_label_smoothing must be in [0, 0.5); got {self.d_label_smoothing} (0.1 is a common choice).",
        )
        _require(self.d_replay_size >= 0, f"d_replay_size must be >= 0; got {self.d_replay_size}.")
        _require(0.0 <= self.d_replay_share <= 1.0, f"d_replay_share must be in [0, 1]; got {self.d_replay_share}.")
        _require(0.5 < self.d_max_acc <= 1.0, f"d_max_acc must be in (0.5, 1]; got {self.d_max_acc}.")
        _require(
            0.0 < self.d_adversarial_lr_scale <= 1.0,
            f"d_adversarial_lr_scale must be in (0, 1]; got {self.d_adversarial_lr_scale}.",
        )
        _require(
            0.0 <= self.kappa < 1.0,
            f"kappa must be in [0, 1); got {self.kappa}. The paper uses 0-0.5; 0.5 made D collapse.",
        )
        _require(
            self.swap_share + self.kappa + self.d_truncated_share <= 1.0,
            f"swap_share ({self.swap_share}) + kappa ({self.kappa}) + d_truncated_share ({self.d_truncated_share}) "
            "must be <= 1: together they are shares of one fake batch; lower one of them.",
        )
        _require(
            0.0 <= self.d_truncated_share <= 1.0, f"d_truncated_share must be in [0, 1]; got {self.d_truncated_share}."
        )
        _require(
            self.finish_priors in FINISH_PRIORS,
            f"finish_priors must be one of {FINISH_PRIORS}; got {self.finish_priors!r}.",
        )
        _require(
            0.0 < self.finish_priors_alpha < 0.5,
            f"finish_priors_alpha must be in (0, 0.5); got {self.finish_priors_alpha}. Typical: 0.05.",
        )
        _require(
            self.d_truncated_cut in TRUNCATED_CUTS,
            f"d_truncated_cut must be one of {TRUNCATED_CUTS}; got {self.d_truncated_cut!r}.",
        )
        _require(
            self.d_truncated_max_words >= 0,
            f"d_truncated_max_words must be >= 0; got {self.d_truncated_max_words}.",
        )
        _require(
            0.0 < self.heldout_fraction < 0.9,
            f"heldout_fraction must be in (0, 0.9);"
            f" got {self.heldout_fraction}. D's held-out accuracy is a required metric.",
        )
        _require(self.heldout_max >= 2, f"heldout_max must be >= 2; got {self.heldout_max}.")
        _require(0.0 <= self.chance_margin < 0.5, f"chance_margin must be in [0, 0.5); got {self.chance_margin}.")
        _require(
            not (self.d_frozen and self.d_warmup_steps == 0),
            "d_frozen=True with d_warmup_steps=0 rewards the policy with an untrained D: set d_warmup_steps > 0 "
            "(e.g. 50) or d_frozen=False.",
        )


# --------------------------------------------------------------------------- overrides from text
# One parser for `rlhb train --set key=value` and the trainer's RLHB_TRAINER_ALGO__<KEY>=<value> variables.


def parse_value(raw: str, annotation: object, label: str) -> object:
    """A text value read by a config field's type (``label`` names it in the error)."""
    text = raw.strip()
    args = typing.get_args(annotation)
    if type(None) in args and text.lower() in ("none", "null", ""):
        return None
    candidates = [a for a in args if a is not type(None)] or [annotation]
    if "," in text:  # `str | tuple[str, ...]` (lora_target_modules): a comma means the list
        candidates.sort(key=lambda kind: typing.get_origin(kind) is not tuple)
    for kind in candidates:
        try:
            if kind is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if kind in (int, float, str):
                return kind(text)
            if typing.get_origin(kind) is tuple:
                return tuple(p.strip() for p in text.split(",") if p.strip())
        except ValueError:
            continue
    raise ConfigError(f"{label}: cannot read {raw!r} as {annotation}")


def apply_overrides(config: Any, overrides: Mapping[str, Any], *, variable: str, strict: bool = True) -> Any:
    """``config`` with ``overrides`` (text values, as environment variables give them) applied and validated.

    ``variable`` is the prefix the keys came from (``RLHB_TRAINER_ALGO``): errors name the
    full variable. A dict field takes a mapping (``RLHB_TRAINER_ALGO__HEAD_WEIGHTS__VIEW=0.5``)
    merged over its default. Unknown keys raise (``strict``) or are skipped: a round of another
    algorithm than the configured one gets only the fields its Config also has.
    """
    cls = type(config)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    changes: dict[str, Any] = {}
    for key, raw in overrides.items():
        name = f"{variable}__{key}".upper()
        if key not in names:
            if strict:
                raise ConfigError(unknown_key_message(name, key, names, f"{cls.__module__}.{cls.__qualname__}"))
            continue
        annotation = hints[key]
        if typing.get_origin(annotation) is dict:
            if not isinstance(raw, Mapping):
                raise ConfigError(f"{name}: {key} is a mapping; set one variable per entry: {name}__<KEY>=<value>")
            value_type = typing.get_args(annotation)[1] if typing.get_args(annotation) else str
            changes[key] = {
                **getattr(config, key),
                **{str(k): parse_value(str(v), value_type, f"{name}__{str(k).upper()}") for k, v in raw.items()},
            }
        elif isinstance(raw, Mapping):
            raise ConfigError(f"{name}: {key} is not a mapping; set {name}=<value> without a __<KEY> suffix")
        else:
            changes[key] = parse_value(str(raw), annotation, f"{name}={raw}")
    return cls(**{**{n: getattr(config, n) for n in names}, **changes})
