"""`rlhb api` as a real process on the real SmolLM2: it answers a simple factual question
correctly (greedy), logs JSON lines, and refuses an unsafe configuration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx

from core.infra.ports import free_port
from tests.helpers.serving import ADMIN, SECRET, new_topics, wait_ready


def api_env(tmp_path, kafka_bootstrap, redis_url, redis_prefix, model_dir, topics) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHB_")}
    env.update(
        {
            "RLHB_MODEL_PATH": str(model_dir),
            "RLHB_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "RLHB_REDIS_URL": redis_url,
            "RLHB_REDIS_PREFIX": redis_prefix,
            "RLHB_STATE_DIR": str(tmp_path / "state"),
            "RLHB_ADAPTER_DIR": str(tmp_path / "adapters"),
            "RLHB_TOPIC_IMPRESSIONS": topics["impressions"],
            "RLHB_TOPIC_FEEDBACK": topics["feedback"],
            "RLHB_API_ADMIN_TOKEN": ADMIN,
            "RLHB_API_IMPRESSION_SECRET": SECRET,
            "HF_HUB_OFFLINE": "1",
        }
    )
    return env


def test_rlhb_api_on_smollm2_answers_capital_of_france(tmp_path, kafka_bootstrap, redis_url, redis_prefix, smollm2_dir):
    port = free_port()
    env = api_env(tmp_path, kafka_bootstrap, redis_url, redis_prefix, smollm2_dir, new_topics(kafka_bootstrap))
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhb.cli", "api", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, timeout_s=180)
        r = httpx.post(
            f"{url}/v1/chat/completions",
            timeout=120,
            json={
                "model": "rlhb-latest",
                "temperature": 0,
                "max_tokens": 24,
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
            },
        )
        q = httpx.post(
            f"{url}/v1/query", timeout=120, json={"query": "What is the capital of France?", "max_tokens": 24}
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["choices"][0]["message"]["content"]
    assert "Paris" in q.json()["answer"]
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    requests = [x for x in records if x.get("event") == "http_request" and x.get("path") == "/v1/query"]
    assert requests and requests[0]["status"] == 200 and requests[0]["impression_id"] == q.json()["impression_id"]
    assert any(x.get("event") == "backend_ready" for x in records)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it (exit status -15)
    assert proc.returncode in (0, -signal.SIGTERM)
    assert any("Finished server process" in x.get("msg", "") for x in records)


def test_rlhb_api_refuses_a_placeholder_admin_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHB_")}
    env.update({"RLHB_API_ADMIN_TOKEN": "changeme", "RLHB_API_IMPRESSION_SECRET": SECRET})
    out = subprocess.run([sys.executable, "-m", "rlhb.cli", "api"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "RLHB_API_ADMIN_TOKEN" in out.stderr and "placeholder" in out.stderr
