"""Schemathesis over every operation of the API's OpenAPI document (issue 16, item 3).

The app runs for real (uvicorn on a loopback port, the tiny model, the real broker and Redis,
a registry with a test adapter version; the admin token goes with every /admin request, so
those are exercised past their auth check, and with no other, so that /v1/feedback is fuzzed
under the rules of ordinary clients). For each operation, a bounded number of generated
requests -- valid ones (positive) and invalid ones (negative) -- must get:

- no server error (5xx): invalid input is a 4xx naming the problem, never a 500;
- a status the operation declares, with a declared content type;
- a body that conforms to the declared schema of that status.

The document is taken from the app itself (``app.openapi()``, no server needed), so every
route is a test case here as soon as it exists. Bounded to keep the file under ~2 minutes on
2 cores: ``EXAMPLES`` per operation and mode, no shrinking beyond Hypothesis' default budget.
"""

from __future__ import annotations

import uuid

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from core.settings import ApiSettings
from service.api.app import create_app
from tests.helpers.serving import AUTH, LiveServer, new_topics, register_test_versions, serving_settings

EXAMPLES = 50
"""Generated requests per operation and mode (positive, negative)."""
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
FIXED_VERSION = "v1"
"""A registered version: promote/{version} is also tried with it (random names are all 404s)."""

DOC = create_app(ApiSettings(dev_mode=True, serve_model=False)).openapi()
SCHEMA = schemathesis.openapi.from_dict(DOC)
CASES = [
    (method.upper(), path, mode)
    for path, item in DOC["paths"].items()
    for method, operation in item.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    # Negative requests need something to get wrong (a parameter or a body).
    if mode == GenerationMode.POSITIVE or operation.get("parameters") or operation.get("requestBody")
]


@pytest.fixture(scope="module")
def live_api(kafka_bootstrap, redis_url, tiny_model_dir, tmp_path_factory):
    import redis

    from core.registry import Registry

    prefix = f"rlhbtest:{uuid.uuid4().hex[:10]}:"
    root = tmp_path_factory.mktemp("fuzz")
    topics = new_topics(kafka_bootstrap)
    # A short answer cap: generation is not what is under test, and 2 cores serve every example.
    settings = serving_settings(
        root, kafka_bootstrap, redis_url, prefix, topics, tiny_model_dir, max_new_tokens=4, max_tokens_cap=8
    )
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    registry = Registry(settings.adapter_dir, client, prefix)
    register_test_versions(registry, tiny_model_dir, [FIXED_VERSION])
    server = LiveServer(create_app(settings)).start()
    yield server.url
    server.stop()
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def test_every_route_is_fuzzed():
    """The parametrisation below covers the whole document (a route added later is fuzzed too)."""
    paths = {path for _, path, _ in CASES}
    assert {"/v1/query", "/v1/chat/completions", "/v1/feedback", "/admin/promote/{version}", "/readyz"} <= paths


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_operation_never_errors_and_conforms_to_its_schema(live_api, method, path, mode):
    operation = SCHEMA[path][method]
    strategy = operation.as_strategy(generation_mode=mode)
    if "{version}" in path:
        strategy = st.one_of(strategy, operation.as_strategy(path_parameters={"version": FIXED_VERSION}))

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests every run: a failure here is reproducible
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate, hypothesis.Phase.shrink],
    )
    @given(case=strategy)
    def run(case):
        response = case.call(base_url=live_api, headers=AUTH if path.startswith("/admin") else None, timeout=60)
        case.validate_response(response, checks=CHECKS)

    run()
