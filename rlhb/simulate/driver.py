"""``rlhb simulate``: play simulated users against the running API, over HTTP only.

For each question: ask the API (``POST /v1/query``, or ``POST /v1/chat/completions`` with
``model=<version>`` to pin a version), let the user model judge the answer, show it to a
small audience of viewers (1 + Poisson(viewers_mean - 1): an answer is read by several
people, as posts on a Q&A site are), and send every viewer's events to
``POST /v1/feedback``. The trainer sees nothing but those events.

Each served answer also yields an evaluation sample: the reaction of its first viewer (the
asker), an independent Bernoulli draw per answer, which the demo's like-rate statistics use.

Reproducible: the random draws of answer i depend only on (seed, i), not on thread timing.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import typer

from rlhb.simulate.users import Reaction, UserModel, load_user_model, sample_reactions


@dataclass(frozen=True)
class SimulationConfig:
    """One simulation run (the ``rlhb simulate`` options)."""

    api_url: str = "http://127.0.0.1:8000"
    """Base URL of the rlhb API."""
    users: str = "concise"
    """User model: a preset (concise, example, warm), 'package.module:Class', or an entry-point name."""
    viewers_mean: float = 5.0
    """Mean viewers per answer (>= 1): 1 + Poisson(viewers_mean - 1)."""
    send_feedback: bool = True
    """Send the viewers' events to the API (False: judge silently, e.g. held-out evaluation)."""
    model: str | None = None
    """None: POST /v1/query (the active version). Else a version name or 'base' via chat completions."""
    max_tokens: int | None = 48
    """Answer length cap sent with each request (None: the server's default)."""
    temperature: float | None = 0.7
    """Sampling temperature sent with each request (None: the server's default, greedy)."""
    concurrency: int = 4
    """Requests in flight at once (the API batches concurrent requests)."""
    seed: int = 0
    """Seed of the user draws: answer i's reactions depend only on (seed, i)."""
    run_tag: str = ""
    """Prefix of event ids (default: random), so that separate runs never collide."""
    timeout_s: float = 600.0
    """HTTP timeout per request (a generation waits behind a batch on a busy CPU)."""
    admin_token: str = ""
    """Bearer token for /admin calls (empty: dev mode)."""
    behavior: str | None = None
    """Behavior sentence sent with each chat request (None: the server's most preferred one); the
    demo's behavior-following check asks the same version under the least preferred sentence."""
    invert_feedback: bool = False
    """Send every like as a dislike and every dislike as a like (a poisoned batch; ``Served``
    keeps the users' true reactions)."""

    def __post_init__(self) -> None:
        if not self.api_url.startswith(("http://", "https://")):
            raise ValueError(f"api_url must start with http:// or https:// (got {self.api_url!r})")
        if self.viewers_mean < 1:
            raise ValueError(
                f"viewers_mean must be >= 1 (every answer is viewed by its asker); got {self.viewers_mean}"
            )
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1; got {self.concurrency}")


@dataclass
class Served:
    """One answer served and judged (a line of the simulation log)."""

    index: int
    question: str
    answer: str
    impression_id: str
    adapter_version: str
    p_like: float
    degenerate: str
    asker_liked: bool
    asker_disliked: bool
    views: int
    clicks: int
    likes: int
    dislikes: int
    events_sent: int
    latency_s: float
    t: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def poisson(lam: float, rng: random.Random) -> int:
    """Knuth's method (lam is small here); stdlib only."""
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def feedback_events(
    impression_id: str, reactions: Sequence[Reaction], tag: str, index: int, invert: bool = False
) -> list[dict]:
    """The viewers' events; ``invert`` swaps likes and dislikes (poisoned feedback)."""
    swap = {"like": "dislike", "dislike": "like"} if invert else {}
    return [
        {"event_id": f"{tag}-{index}-{v}-{kind}", "impression_id": impression_id, "kind": swap.get(kind, kind)}
        for v, reaction in enumerate(reactions)
        for kind in reaction.kinds()
    ]


class ApiClient:
    """The few endpoints the simulation uses, with retries on 503 (model loading, broker down)."""

    def __init__(self, config: SimulationConfig) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {config.admin_token}"} if config.admin_token else {}
        self.config = config
        self.http = httpx.Client(base_url=config.api_url, timeout=config.timeout_s, headers=headers)

    def close(self) -> None:
        self.http.close()

    def _post(self, path: str, body: dict, attempts: int = 20):
        import httpx

        for attempt in range(attempts):
            try:
                response = self.http.post(path, json=body)
            except httpx.TransportError:
                if attempt == attempts - 1:
                    raise
                time.sleep(1.0)
                continue
            if response.status_code == 503 and attempt < attempts - 1:
                time.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            if response.status_code >= 400:
                raise RuntimeError(f"POST {path} -> {response.status_code}: {response.text[:500]}")
            return response.json()
        raise RuntimeError(f"POST {path}: still unavailable after {attempts} attempts")

    def ask(self, question: str) -> tuple[str, str, str]:
        """(answer, impression_id, adapter_version)."""
        c = self.config
        if c.model is None:
            body = {"query": question}
            if c.max_tokens is not None:
                body["max_tokens"] = c.max_tokens
            if c.temperature is not None:
                body["temperature"] = c.temperature
            out = self._post("/v1/query", body)
            return out["answer"], out["impression_id"], out["adapter_version"]
        body = {"model": c.model, "messages": [{"role": "user", "content": question}]}
        if c.max_tokens is not None:
            body["max_tokens"] = c.max_tokens
        if c.temperature is not None:
            body["temperature"] = c.temperature
        if c.behavior is not None:
            body["behavior"] = c.behavior
        out = self._post("/v1/chat/completions", body)
        version = out.get("adapter_version") or out.get("model", "")
        return out["choices"][0]["message"]["content"], out["impression_id"], version

    def feedback(self, events: list[dict]) -> int:
        if not events:
            return 0
        out = self._post("/v1/feedback", {"events": events})
        return int(out.get("accepted", len(events)))

    def get(self, path: str) -> dict:
        response = self.http.get(path)
        response.raise_for_status()
        return response.json()

    def admin(self, path: str, body: dict | None = None) -> dict:
        response = self.http.post(path, json=body)
        if response.status_code >= 400:
            raise RuntimeError(f"POST {path} -> {response.status_code}: {response.text[:500]}")
        return response.json()


def simulate_one(client: ApiClient, user: UserModel, config: SimulationConfig, tag: str, index: int, question: str):
    rng = random.Random(f"{config.seed}:{index}")
    t0 = time.perf_counter()
    answer, impression_id, version = client.ask(question)
    latency = time.perf_counter() - t0
    judgement = user.judge(question, answer)
    viewers = 1 + poisson(config.viewers_mean - 1, rng)
    reactions = sample_reactions(judgement, viewers, rng)
    sent = 0
    if config.send_feedback:
        sent = client.feedback(feedback_events(impression_id, reactions, tag, index, config.invert_feedback))
    return Served(
        index=index,
        question=question,
        answer=answer,
        impression_id=impression_id,
        adapter_version=version,
        p_like=judgement.p_like,
        degenerate=judgement.degenerate,
        asker_liked=reactions[0].like,
        asker_disliked=reactions[0].dislike,
        views=viewers,
        clicks=sum(r.click for r in reactions),
        likes=sum(r.like for r in reactions),
        dislikes=sum(r.dislike for r in reactions),
        events_sent=sent,
        latency_s=latency,
    )


def run_simulation(
    config: SimulationConfig,
    questions: Sequence[str],
    *,
    start_index: int = 0,
    on_served: Callable[[Served], None] | None = None,
    stop: threading.Event | None = None,
    user: UserModel | None = None,
) -> list[Served]:
    """Serve and judge every question once (in order of completion); ``start_index`` offsets
    the answer indices so that successive calls draw fresh randomness."""
    import uuid

    user = user or load_user_model(config.users)
    tag = config.run_tag or f"sim{uuid.uuid4().hex[:10]}"
    client = ApiClient(config)
    out: list[Served] = []
    lock = threading.Lock()

    def work(i: int, q: str) -> None:
        if stop is not None and stop.is_set():
            return
        served = simulate_one(client, user, config, tag, start_index + i, q)
        with lock:
            out.append(served)
            if on_served is not None:
                on_served(served)

    pool = ThreadPoolExecutor(max_workers=config.concurrency)
    try:
        for future in [pool.submit(work, i, q) for i, q in enumerate(questions)]:
            future.result()
    except BaseException:
        # The first failure ends the run: the questions still queued are dropped, not each retried
        # until it fails too (an API that keeps answering 503 held a 300-answer batch for ~25 minutes).
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        client.close()
    return out


def question_stream(questions: Sequence[str], n: int, seed: int) -> Iterator[str]:
    """n questions drawn by shuffled passes over ``questions`` (every one before any repeats)."""
    rng = random.Random(seed)
    pool: list[str] = []
    for _ in range(n):
        if not pool:
            pool = list(questions)
            rng.shuffle(pool)
        yield pool.pop()


def simulate(
    api_url: str = typer.Option("http://127.0.0.1:8000", help="Base URL of the rlhb API."),
    users: str = typer.Option("concise", help="User model: concise | example | warm | package.module:Class."),
    n: int = typer.Option(100, min=1, help="Answers to request."),
    split: str = typer.Option("train", help="Questions from the 'train' or 'held-out' split."),
    viewers_mean: float = typer.Option(5.0, min=1.0, help="Mean viewers per answer (1 + Poisson(mean-1))."),
    feedback: bool = typer.Option(True, "--feedback/--no-feedback", help="--no-feedback: judge silently (evaluation)."),
    model: str = typer.Option("", help="Pin a version ('base' or a name) via chat completions; default: active."),
    max_tokens: int = typer.Option(48, min=1, help="Answer length cap per request."),
    temperature: float = typer.Option(0.7, min=0.0, max=2.0, help="Sampling temperature per request."),
    concurrency: int = typer.Option(4, min=1, help="Requests in flight."),
    seed: int = typer.Option(0, help="Seed of question order and user draws."),
    log: Path = typer.Option(None, help="Append one JSON line per served answer here."),
) -> None:
    """Simulated users: ask the API, judge the answers with a hidden preference, send feedback."""
    import os

    from rlhb.evaluation.stats import wilson_interval
    from rlhb.queries import split_questions

    if split not in ("train", "held-out"):
        raise typer.BadParameter("split must be 'train' or 'held-out'")
    try:
        config = SimulationConfig(
            api_url=api_url,
            users=users,
            viewers_mean=viewers_mean,
            send_feedback=feedback,
            model=model or None,
            max_tokens=max_tokens,
            temperature=temperature,
            concurrency=concurrency,
            seed=seed,
            admin_token=os.environ.get("RLHB_API_ADMIN_TOKEN", ""),
        )
        user = load_user_model(users)
    except ValueError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    qs = split_questions()
    questions = list(question_stream(qs.train if split == "train" else qs.held_out, n, seed))
    sink = log.open("a", encoding="utf-8") if log else None
    done = {"n": 0, "liked": 0}

    def progress(s: Served) -> None:
        done["n"] += 1
        done["liked"] += s.asker_liked
        if sink:
            sink.write(s.to_json() + "\n")
            sink.flush()
        if done["n"] % 10 == 0 or done["n"] == n:
            typer.echo(f"[{done['n']}/{n}] like rate {done['liked'] / done['n']:.3f} (version {s.adapter_version})")

    try:
        served = run_simulation(config, questions, on_served=progress, user=user)
    except RuntimeError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    finally:
        if sink:
            sink.close()
    ci = wilson_interval(sum(s.asker_liked for s in served), len(served))
    summary = {
        "answers": len(served),
        "events_sent": sum(s.events_sent for s in served),
        "like_rate": ci.rate,
        "ci95": [round(ci.low, 4), round(ci.high, 4)],
        "mean_p_like": sum(s.p_like for s in served) / max(1, len(served)),
        "versions": sorted({s.adapter_version for s in served}),
    }
    typer.echo(json.dumps(summary))
