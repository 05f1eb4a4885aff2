"""In-process experiments for the closed-loop demo (bypassing HTTP, same math and data shapes).

Subcommands (each prints JSON lines; results go to bench/demo_experiments.md by hand):

  gen     generate answers from base (or an adapter) for train or held-out questions, append
          them to a JSONL cache (resumable: already generated (question, sample) pairs are skipped)
  records turn cached train answers into BehaviorRecords with simulated users' events
          (same encoding as the aggregator: per-view rates, 3 levels at fitted quantiles)
  train   run a trainer algorithm (get_algorithm(name)) on those records
  eval    judge cached held-out answers of one version: like rate (one asker per answer, Wilson CI),
          mean true like probability, quality (MiniLM relevance, repeated n-grams, length)
  compare like rate of a version vs base with the z and Fisher tests

Run with `python bench/demo_experiment.py <cmd> --help`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OUT = Path(os.environ.get("RLHB_EXP_DIR", "/tmp/rlhb-exp"))


def log(**kw) -> None:
    print(json.dumps(kw), flush=True)


def model_dir() -> str:
    from core.model_prep import default_model_dir

    return str(default_model_dir())


def behavior_sentence() -> str:
    from core.behavior.encoding import most_preferred_sentence

    return most_preferred_sentence()


def load_generator(adapter: str | None, threads: int):
    from rlhb.evaluation.offline_answers import load_generator as load

    return load(model_dir(), adapter, threads)


def generate(tok, model, questions, behavior, max_new_tokens, temperature, seed):
    import torch

    from rlhb.evaluation.offline_answers import generate_answers

    torch.manual_seed(seed)
    return generate_answers(tok, model, questions, behavior, max_new_tokens, temperature)


def cmd_gen(a) -> None:
    from rlhb.queries import split_questions

    split = split_questions()
    pool = split.train if a.split == "train" else split.held_out
    rng = random.Random(a.seed)
    items = []
    for s in range(a.samples):
        qs = list(pool)
        rng.shuffle(qs)
        items += [(q, s) for q in qs]
    items = items[: a.n] if a.n else items
    path = Path(a.out)
    done = set()
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            done.add((r["question"], r["sample"]))
    todo = [it for it in items if it not in done]
    log(event="gen_start", todo=len(todo), done=len(done), out=str(path))
    tok, model = load_generator(a.adapter, a.threads)
    behavior = a.behavior or behavior_sentence()
    t0 = time.time()
    with path.open("a") as f:
        for i in range(0, len(todo), a.batch):
            chunk = todo[i : i + a.batch]
            answers = generate(
                tok,
                model,
                [q for q, _ in chunk],
                behavior,
                a.max_new_tokens,
                a.temperature,
                a.seed * 100003 + len(done) + i,
            )
            for (q, s), ans in zip(chunk, answers, strict=True):
                f.write(
                    json.dumps({"question": q, "sample": s, "answer": ans, "behavior": behavior, "version": a.version})
                    + "\n"
                )
            f.flush()
            log(event="gen_progress", n=i + len(chunk), of=len(todo), elapsed_s=round(time.time() - t0, 1))
    log(
        event="gen_done",
        n=len(todo),
        elapsed_s=round(time.time() - t0, 1),
        per_answer_s=round((time.time() - t0) / max(1, len(todo)), 3),
    )


def make_records(answers: list[dict], users: str, viewers_mean: float, seed: int):
    """BehaviorRecords exactly as the aggregator would build them from the users' events."""
    from rlhb.simulate.records import records_from_answers

    return records_from_answers(answers, users, viewers_mean, seed)


def load_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def cmd_records(a) -> None:
    from scipy.stats import spearmanr

    answers = load_jsonl(a.answers)[: a.n or None]
    records, p_like, enc = make_records(answers, a.users, a.viewers_mean, a.seed)
    top = sum(r.behavior_text == behavior_sentence() for r in records) / len(records)
    rho = spearmanr([r.buckets["like_rate"] for r in records], p_like).statistic
    log(
        event="records",
        n=len(records),
        edges=enc.edges.edges,
        top_pattern_share=round(top, 3),
        like_level_spearman_vs_true=round(float(rho), 3),
        mean_p_like=round(sum(p_like) / len(p_like), 4),
    )


def parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for p in pairs:
        k, _, v = p.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def cmd_train(a) -> None:
    import dataclasses

    import torch

    from trainer.algorithms import TrainRequest, default_config, get_algorithm

    torch.set_num_threads(a.threads)
    answers = load_jsonl(a.answers)[: a.n or None]
    records, _, _ = make_records(answers, a.users, a.viewers_mean, a.seed)
    config = default_config(a.algorithm)
    config = dataclasses.replace(config, **parse_overrides(a.set or []))
    if a.preferred_share > 0:  # the E1 experiment's patch, now RLHBConfig.preferred_prompt_share
        config = dataclasses.replace(config, preferred_prompt_share=a.preferred_share)
    out_root = Path(a.output_root)
    out_root.mkdir(parents=True, exist_ok=True)
    parent = None
    if a.parent:  # chain runs (e.g. behavior-conditioned SFT, then RLHB), as `rlhb train --from-adapter`
        from trainer.cli import _parent_version

        parent = _parent_version(Path(a.parent))
    request = TrainRequest(
        records=records,
        model_path=model_dir(),
        parent=parent,
        output_root=out_root,
        version_name=a.name,
        metrics_path=out_root / f"{a.name}.metrics.jsonl",
        seed=a.seed,
        steps=a.steps,
        progress=False,
    )
    log(
        event="train_start",
        algorithm=a.algorithm,
        records=len(records),
        steps=a.steps,
        config={k: v for k, v in dataclasses.asdict(config).items() if not isinstance(v, (list, dict))},
    )
    t0 = time.time()
    result = get_algorithm(a.algorithm)(request, config)
    log(
        event="train_done",
        checkpoint=str(result.checkpoint),
        elapsed_s=round(time.time() - t0, 1),
        last=result.metrics[-1] if result.metrics else {},
    )


def cmd_steer(a) -> None:
    """Behavior-conditioned SFT alone (``trainer.algorithms.steer``), saved as a LoRA adapter folder."""
    import torch

    from trainer.algorithms.steer import steer
    from trainer.config import PPOConfig
    from trainer.policy import Policy
    from trainer.records import check_swappable

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    records, _, _ = make_records(load_jsonl(a.answers)[: a.n or None], a.users, a.viewers_mean, a.seed)
    pool = check_swappable(records)
    policy = Policy.load(model_dir(), PPOConfig(threads=a.threads))
    t0 = time.time()
    history = steer(
        policy, records, a.steps, a.lr, a.batch, random.Random(a.seed),
        contrast_weight=a.contrast, beta=a.beta,
        opposite=pool.contrast_mirror(a.contrast_records),
    )  # fmt: skip
    out = Path(a.out)
    policy.model.save_pretrained(str(out))
    with (out / "steer.metrics.jsonl").open("w") as f:
        for i, h in enumerate(history):
            f.write(json.dumps({"iteration": i, **h}) + "\n")
    log(event="steer_done", out=str(out), elapsed_s=round(time.time() - t0, 1), last=history[-1] if history else {})


def cmd_eval(a) -> None:
    from rlhb.evaluation.quality import quality_report
    from rlhb.evaluation.stats import wilson_interval
    from rlhb.simulate.users import load_user_model, sample_reaction

    rows = load_jsonl(a.answers)
    user = load_user_model(a.users)
    liked, p = [], []
    for i, r in enumerate(rows):
        j = user.judge(r["question"], r["answer"])
        liked.append(sample_reaction(j, random.Random(f"eval{a.seed}:{i}")).like)
        p.append(j.p_like)
    ci = wilson_interval(sum(liked), len(liked))
    q = quality_report([r["question"] for r in rows], [r["answer"] for r in rows], relevance=not a.no_relevance)
    log(
        event="eval",
        answers=a.answers,
        n=len(rows),
        like_rate=round(ci.rate, 4),
        ci=[round(ci.low, 4), round(ci.high, 4)],
        mean_p_like=round(sum(p) / len(p), 4),
        likes=sum(liked),
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in q.as_dict().items() if k != "n"},
    )


def cmd_reward(a) -> None:
    """Reward fidelity: train a reward (D, classifier or pairwise RM) on the records, score held-out
    answers under the serving sentence, and correlate with the users' true like probability."""
    import dataclasses

    import torch
    from scipy.stats import spearmanr

    from rlhb.simulate.users import load_user_model
    from trainer.algorithms import TrainRequest, default_config

    torch.set_num_threads(a.threads)
    records, _, _ = make_records(load_jsonl(a.answers)[: a.n or None], a.users, a.viewers_mean, a.seed)
    rows = load_jsonl(a.eval)
    user = load_user_model(a.users)
    truth = [user.judge(r["question"], r["answer"]).p_like for r in rows]
    qs, ans = [r["question"] for r in rows], [r["answer"] for r in rows]
    config = dataclasses.replace(default_config(a.algorithm), **parse_overrides(a.set or []))
    t0 = time.time()
    out = {}
    if a.algorithm == "rlhb":
        from trainer.algorithms.rlhb import RLHBTrainer

        request = TrainRequest(
            records=records,
            model_path=model_dir(),
            output_root=OUT / "scratch",
            version_name=f"reward-{time.time_ns()}",
            seed=a.seed,
            steps=1,
            progress=False,
        )
        trainer = RLHBTrainer(request, config)
        history = trainer.warmup()
        out["d_heldout_acc"] = trainer.heldout_acc
        out["warmup_last_loss"] = history[-1]["d_loss"] if history else None
        serving = [behavior_sentence()] * len(rows)
        scores = []
        raw = []
        for i in range(0, len(rows), 32):
            scores += trainer.reward(qs[i : i + 32], ans[i : i + 32], serving[i : i + 32]).tolist()
            with torch.no_grad():
                raw += trainer.discriminator.logits(qs[i : i + 32], ans[i : i + 32], serving[i : i + 32]).tolist()
        out["spearman_raw_d"] = float(spearmanr(raw, truth).statistic)
    elif a.algorithm == "rlhbc":
        from trainer.reward_models.behavior_classifier import train_behavior_classifier

        rm, metrics = train_behavior_classifier(records, config.classifier_config(model_dir()), seed=a.seed)
        out["rm_metrics"] = metrics
        scores = rm.score(qs, ans).tolist()
    else:
        from trainer.reward_models.pairwise import train_pairwise_rm

        rm, metrics = train_pairwise_rm(records, config.pairwise_config(model_dir()), seed=a.seed)
        out["rm_metrics"] = metrics
        scores = rm.score(qs, ans).tolist()
    log(
        event="reward",
        algorithm=a.algorithm,
        n=len(rows),
        seconds=round(time.time() - t0, 1),
        spearman=round(float(spearmanr(scores, truth).statistic), 4),
        **out,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--split", choices=["train", "held-out"], default="train")
    g.add_argument("--samples", type=int, default=3, help="Passes over the split (answers per question).")
    g.add_argument("--n", type=int, default=0, help="Stop after this many answers (0: all).")
    g.add_argument("--adapter", default="")
    g.add_argument("--version", default="base")
    g.add_argument("--behavior", default="")
    g.add_argument("--max-new-tokens", type=int, default=48)
    g.add_argument("--temperature", type=float, default=0.7)
    g.add_argument("--batch", type=int, default=32)
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True)
    r = sub.add_parser("records")
    t = sub.add_parser("train")
    for sp in (r, t):
        sp.add_argument("--answers", required=True)
        sp.add_argument("--n", type=int, default=0)
        sp.add_argument("--users", default="concise")
        sp.add_argument("--viewers-mean", type=float, default=5.0)
        sp.add_argument("--seed", type=int, default=0)
    t.add_argument("--algorithm", default="rlhb")
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--name", required=True)
    t.add_argument("--output-root", default=str(OUT / "adapters"))
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--set", nargs="*", help="Config overrides key=value (JSON values).")
    t.add_argument("--parent", default="", help="Start from this adapter folder instead of a fresh LoRA.")
    t.add_argument("--preferred-share", type=float, default=0.0, help="RLHB: preferred_prompt_share.")
    st = sub.add_parser("steer")
    st.add_argument("--answers", required=True)
    st.add_argument("--n", type=int, default=0)
    st.add_argument("--users", default="concise")
    st.add_argument("--viewers-mean", type=float, default=5.0)
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--steps", type=int, default=160)
    st.add_argument("--lr", type=float, default=3e-4)
    st.add_argument("--batch", type=int, default=8)
    st.add_argument("--contrast", type=float, default=1.0)
    st.add_argument("--beta", type=float, default=0.1)
    st.add_argument("--contrast-records", choices=("all", "preferred"), default="preferred")
    st.add_argument("--threads", type=int, default=2)
    st.add_argument("--out", required=True)
    w = sub.add_parser("reward")
    w.add_argument("--answers", required=True)
    w.add_argument("--eval", required=True, help="Answers to score (JSONL from gen).")
    w.add_argument("--n", type=int, default=0)
    w.add_argument("--users", default="concise")
    w.add_argument("--viewers-mean", type=float, default=5.0)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--algorithm", default="rlhb")
    w.add_argument("--threads", type=int, default=2)
    w.add_argument("--set", nargs="*")
    e = sub.add_parser("eval")
    e.add_argument("--answers", required=True)
    e.add_argument("--users", default="concise")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--no-relevance", action="store_true")
    a = p.parse_args()
    commands = {"gen": cmd_gen, "records": cmd_records, "train": cmd_train, "steer": cmd_steer, "eval": cmd_eval}
    {**commands, "reward": cmd_reward}[a.cmd](a)


if __name__ == "__main__":
    main()
