"""Pairwise judges for `rlhb eval compare`: given a question and two answers in a fixed order
(shown first, shown second), which is better? Selected by a spec string (``load_judge``):

- ``users:PRESET``: a simulated user (rlhb/simulate/users.py) prefers the answer with the
  higher true like probability ``p_like``; equal ``p_like`` is a tie. Order-blind by design.
- ``openai:URL``: any OpenAI-compatible chat endpoint (the RLHB paper used GPT-4-Turbo) reads
  a prompt with both answers and answers "A" (first) or "B" (second). LLM judges have a
  position bias, which is why compare.py asks in both orders.
- ``classifier:PATH``: RLHBC's behavior classifier (RLHB paper, eq. 1) saved by
  ``trainer.reward_models.behavior_classifier.save_behavior_classifier`` prefers the answer
  with the higher predicted reward, the same ``classifier_reward`` RLHBC trains the policy on
  (expected bucket per head, likes up and dislikes down). Deterministic and order-blind.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal, Protocol

Pick = Literal["first", "second", "tie"]

DEFAULT_PROMPT = """You compare two answers of an AI assistant to the same user question.

Question:
{question}

Answer A:
{answer_a}

Answer B:
{answer_b}

Which answer is more helpful, correct and clear? Reply with the single letter A or B."""
PLACEHOLDERS = ("{question}", "{answer_a}", "{answer_b}")


class Judge(Protocol):
    name: str

    def pick(self, question: str, first: str, second: str) -> Pick: ...


class UsersJudge:
    """The simulated user's true like probability decides; no sampling, so no noise."""

    def __init__(self, preset: str):
        from rlhb.simulate.users import PRESETS, load_user_model

        if preset not in PRESETS:
            raise ValueError(f"judge users:{preset}: unknown preset; use one of {', '.join(PRESETS)}")
        self.name, self.user = f"users:{preset}", load_user_model(preset)

    def pick(self, question: str, first: str, second: str) -> Pick:
        p_first = self.user.judge(question, first).p_like
        p_second = self.user.judge(question, second).p_like
        return "first" if p_first > p_second else "second" if p_second > p_first else "tie"


class OpenAIJudge:
    """One chat completion per ordered pair; the reply must start with A or B (else a tie,
    counted in ``unparsed``: a judge that rambles must not silently pick a side)."""

    def __init__(self, url: str, prompt: str, model: str, timeout_s: float = 120.0, retries: int = 2):
        import httpx

        missing = [p for p in PLACEHOLDERS if p not in prompt]
        if missing:
            raise ValueError(f"the judge prompt must contain {', '.join(PLACEHOLDERS)}; missing {', '.join(missing)}")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"judge openai:{url}: the URL must start with http:// or https://")
        # Base URL as OpenAI clients take it (.../v1) or the full route: both work.
        self.url = url if url.rstrip("/").endswith("/chat/completions") else url.rstrip("/") + "/chat/completions"
        self.name, self.prompt, self.model, self.retries = f"openai:{url}", prompt, model, retries
        key = os.environ.get("OPENAI_API_KEY", "")
        self.http = httpx.Client(timeout=timeout_s, headers={"Authorization": f"Bearer {key}"} if key else {})
        self.unparsed = 0

    def pick(self, question: str, first: str, second: str) -> Pick:
        text = self.prompt
        for placeholder, value in zip(PLACEHOLDERS, (question, first, second), strict=True):
            text = text.replace(placeholder, value)
        reply = self._complete(text)
        match = re.match(r"\W*(A|B)\b", reply)
        if not match:
            self.unparsed += 1
            return "tie"
        return "first" if match.group(1) == "A" else "second"

    def _complete(self, prompt: str) -> str:
        import httpx

        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0.0}
        last: Exception | None = None
        for _ in range(1 + self.retries):
            try:
                response = self.http.post(self.url, json=body)
                response.raise_for_status()
                return str(response.json()["choices"][0]["message"]["content"] or "")
            except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as e:
                last = e
        raise ValueError(f"judge endpoint {self.url} failed {1 + self.retries} times: {type(last).__name__}: {last}")


class ClassifierJudge:
    """A saved behavior classifier's reward decides; within ``TIE_EPSILON`` it is a tie.

    Each (question, answer) is scored once, alone, and cached: both orders of a pair then read
    the same two numbers (one verdict in both orders), and batch padding cannot nudge a score.
    """

    # Rewards lie in [-1, 1]; a gap below 1e-4 is float noise, not a preference the classifier holds.
    TIE_EPSILON = 1e-4

    def __init__(self, path: str):
        from trainer.reward_models.behavior_classifier import load_behavior_classifier

        self.name, self.model = f"classifier:{path}", load_behavior_classifier(Path(path))
        self.scores: dict[tuple[str, str], float] = {}

    def score(self, question: str, answer: str) -> float:
        key = (question, answer)
        if key not in self.scores:
            self.scores[key] = float(self.model.score([question], [answer])[0])
        return self.scores[key]

    def pick(self, question: str, first: str, second: str) -> Pick:
        gap = self.score(question, first) - self.score(question, second)
        return "tie" if abs(gap) <= self.TIE_EPSILON else "first" if gap > 0 else "second"


def load_judge(spec: str, prompt_file: Path | None = None, model: str = "gpt-4-turbo") -> Judge:
    """``users:PRESET``, ``openai:URL`` or ``classifier:PATH``; ValueError (one clear line) on anything else."""
    kind, _, arg = spec.partition(":")
    if not arg:
        raise ValueError(f"judge {spec!r}: use users:PRESET (e.g. users:concise), openai:URL or classifier:PATH")
    if prompt_file is not None and kind != "openai":
        raise ValueError("--prompt-file is for openai:URL judges only")
    if kind == "users":
        return UsersJudge(arg)
    if kind == "openai":
        if prompt_file is not None and not prompt_file.is_file():
            raise ValueError(f"--prompt-file {prompt_file}: no such file")
        prompt = prompt_file.read_text() if prompt_file is not None else DEFAULT_PROMPT
        return OpenAIJudge(arg, prompt, model)
    if kind == "classifier":
        return ClassifierJudge(arg)
    raise ValueError(f"judge {spec!r}: unknown kind {kind!r}; use users:PRESET, openai:URL or classifier:PATH")
