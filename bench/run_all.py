"""Run every benchmark in bench/ (``make bench``), each in its own process with a timeout, and
print one summary on stdout: a table, then a final JSON line (the benches' own output is
echoed on stderr as it comes).

Each ``bench/bench_*.py`` prints JSON lines (``{"bench", "metric", "value", ...}``), the last
one ``"metric": "summary"``; this runner collects those lines. By default every benchmark
runs with small, quick settings (minutes, not the figures for bench/README.md); ``--full``
runs each with its own defaults. A benchmark whose prerequisites are missing (e.g. the
TRL venvs of bench_rlhb_vs_trl.py) is skipped with the reason printed. A script found in
bench/ but not described here runs with no arguments.

    .venv/bin/python bench/run_all.py [--list] [--only registry[,serving]] [--full] [--timeout S]

Exit status: 0 when nothing failed or timed out (skips are fine), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"


def _trl_venvs_ready() -> tuple[list[str], str]:
    """(extra args, skip reason): run bench_rlhb_vs_trl only against the TRL venvs already built
    (building them needs the package registry and minutes; run that script directly for it)."""
    ready = [
        name
        for name, venv in (("trl_ppo", ".venv-bench-ppo"), ("trl_rloo", ".venv-bench-rloo"))
        if (ROOT / venv / ".bench-ready").is_file()
    ]
    if not ready:
        return [], (
            "needs trl, which lives in its own venvs (.venv-bench-ppo, .venv-bench-rloo), not built here; "
            "run .venv/bin/python bench/bench_rlhb_vs_trl.py once to build them (needs the package registry)"
        )
    return ["--no-create", "--only", ",".join(["rlhb", *ready])], ""


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    quick: tuple[str, ...] = ()
    """Arguments for a quick run (the default of this runner)."""
    timeout_s: float = 900.0
    """Quick-run timeout; a --full run gets four times as long unless --timeout is given."""
    prerequisites: object = None
    """None, or a function () -> (extra args, skip reason); a non-empty reason skips the bench."""
    note: str = ""


BENCHES = (
    Bench("aggregator", "bench_aggregator.py", ("--events", "5000", "--impressions", "500", "--rounds", "1"), 600),
    Bench(
        "kafka_clients", "bench_kafka_clients.py", ("--events", "5000", "--impressions", "500", "--rounds", "1"), 300
    ),
    Bench("registry", "bench_registry.py", ("--repeats", "3"), 300),
    Bench(
        "serving",
        "bench_serving.py",
        ("--prompts", "2", "--per-client", "1", "--swaps", "1", "--tokens", "8"),
        900,
    ),
    Bench("rollouts", "bench_rollouts.py", ("--rounds", "1", "--prompts", "4", "--tokens", "16"), 600),
    # Quick: one minute; --full: the 10-minute soak (32 clients) of bench/README.md.
    Bench("soak", "bench_soak.py", ("--seconds", "60", "--warmup-s", "10", "--window-s", "20"), 600),
    Bench(
        "rlhb_vs_trl",
        "bench_rlhb_vs_trl.py",
        ("--steps", "3", "--warmup", "1"),
        1200,
        prerequisites=_trl_venvs_ready,
        note="contestants whose TRL venv is missing are left out",
    ),
)


@dataclass
class Outcome:
    name: str
    status: str  # ok | failed | timeout | skipped
    seconds: float = 0.0
    reason: str = ""
    summary: dict = field(default_factory=dict)
    lines: list[dict] = field(default_factory=list)


def discover() -> list[Bench]:
    """The described benches, plus any other bench/bench_*.py (run without arguments)."""
    known = {b.script for b in BENCHES}
    extra = [Bench(p.stem.removeprefix("bench_"), p.name) for p in sorted(BENCH_DIR.glob("bench_*.py"))]
    return [b for b in BENCHES if (BENCH_DIR / b.script).is_file()] + [b for b in extra if b.script not in known]


def _json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
    return out


def run_one(bench: Bench, full: bool, timeout_s: float | None) -> Outcome:
    extra, reason = bench.prerequisites() if bench.prerequisites else ([], "")
    if reason:
        return Outcome(bench.name, "skipped", reason=reason)
    args = [*([] if full else bench.quick), *extra]
    limit = timeout_s or (bench.timeout_s * (4 if full else 1))
    cmd = [sys.executable, str(BENCH_DIR / bench.script), *args]
    print(f"# {bench.name}: {' '.join(cmd[1:])} (timeout {limit:.0f} s)", file=sys.stderr, flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.monotonic()
    # own session: a timeout kills the bench and everything it started (API, broker, contestants)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    captured: list[str] = []

    def pump() -> None:  # echo the bench's stdout as it comes, keep it for parsing
        for line in proc.stdout:
            captured.append(line)
            print(f"  {bench.name} | {line.rstrip()}", file=sys.stderr, flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(limit)
        status, why = ("ok", "") if rc == 0 else ("failed", f"exit status {rc}")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        status, why = "timeout", f"killed after {limit:.0f} s"
    reader.join(5)
    lines = _json_lines("".join(captured))
    summaries = [x for x in lines if x.get("metric") == "summary"]
    if status == "ok" and not summaries:
        status, why = "failed", "no summary line on stdout"
    return Outcome(bench.name, status, time.monotonic() - started, why, summaries[-1] if summaries else {}, lines)


def _headline(summary: dict) -> str:
    """The summary line's figures, compactly (its value first when it has one)."""
    fields = {k: v for k, v in summary.items() if k not in ("bench", "metric")}
    parts = []
    if "value" in fields:
        parts.append(f"value={fields.pop('value')}")
    for k, v in fields.items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            parts.append(f"{k}={round(v, 4) if isinstance(v, float) else v}")
    text = ", ".join(parts)
    return text if len(text) <= 110 else text[:107] + "..."


def print_table(outcomes: list[Outcome]) -> None:
    width = max([len("bench"), *(len(o.name) for o in outcomes)])
    print(f"{'bench':<{width}}  {'status':<8} {'seconds':>8}  summary / reason")
    for o in outcomes:
        detail = _headline(o.summary) if o.summary else ""
        if o.reason:
            detail = f"{o.reason}" if not detail else f"{detail} ({o.reason})"
        print(f"{o.name:<{width}}  {o.status:<8} {o.seconds:>8.1f}  {detail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the benchmarks and their quick arguments, run none")
    parser.add_argument("--only", default="", help="comma-separated benchmark names (see --list); default: all")
    parser.add_argument("--full", action="store_true", help="each benchmark's own defaults instead of quick settings")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per benchmark (overrides the defaults)")
    args = parser.parse_args(argv)

    benches = discover()
    if args.list:
        for b in benches:
            _, reason = b.prerequisites() if b.prerequisites else ([], "")
            quick = " ".join(b.quick) or "(no arguments)"
            state = f"skip: {reason}" if reason else "runnable"
            print(f"{b.name:<12} bench/{b.script:<22} quick: {quick:<60} timeout {b.timeout_s:.0f} s  [{state}]")
        return 0
    names = {b.name for b in benches}
    chosen = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(chosen) - names)
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {sorted(names)}")
    selected = [b for b in benches if not chosen or b.name in chosen]

    outcomes = []
    for b in selected:
        outcome = run_one(b, args.full, args.timeout)
        if outcome.status == "skipped":
            print(f"# {b.name}: skipped: {outcome.reason}", file=sys.stderr, flush=True)
        outcomes.append(outcome)
    print_table(outcomes)
    result = {
        "bench": "all",
        "mode": "full" if args.full else "quick",
        "results": [
            {"name": o.name, "status": o.status, "seconds": round(o.seconds, 1), "reason": o.reason}
            | {"summary": o.summary}
            for o in outcomes
        ],
        "ok": all(o.status in ("ok", "skipped") for o in outcomes),
    }
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
