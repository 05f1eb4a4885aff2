"""deploy/k8s/ cannot be applied here (no cluster); validate it instead, so the example cannot
drift from the code: every file parses, every RLHB_* variable is a real setting, every other
variable is spliced into one with $(NAME), every Secret/ConfigMap/PVC reference resolves, the
API's probes and port match the API, every container requests resources, and the ConfigMap
plus the Secret template pass each process's settings validation."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from core.settings import AggregatorSettings, ApiSettings, TrainerSettings

from .test_compose import KNOWN

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
ROLES = {"rlhb-api": "api", "rlhb-aggregator": "aggregator", "rlhb-trainer": "trainer"}


def _docs() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def _kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in _docs() if d.get("kind") == kind}


def _containers():
    for name, deployment in _kind("Deployment").items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            yield name, deployment, container


def _config() -> dict[str, str]:
    return _kind("ConfigMap")["rlhb-config"]["data"]


def _secret_keys() -> dict[str, set[str]]:
    return {name: set(s.get("stringData", {})) | set(s.get("data", {})) for name, s in _kind("Secret").items()}


def test_every_manifest_parses_and_the_kustomization_lists_them():
    assert {"rlhb-api", "rlhb-aggregator", "rlhb-trainer"} == set(_kind("Deployment"))
    assert {"rlhb-vllm"} == set(_kind("StatefulSet"))
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    # Real secrets are created out of band; the template is not applied by `kubectl apply -k`.
    assert "secret.example.yaml" not in kustomization["resources"]
    assert (K8S / "README.md").is_file()


def test_every_variable_is_a_setting_or_spliced_into_one():
    spliced: set[str] = set()
    for _, _, container in _containers():
        for env in container.get("env", []):
            spliced.update(REFERENCE.findall(str(env.get("value", ""))))
    for key in _config():
        if key.startswith("RLHB_"):
            assert key in KNOWN, f"ConfigMap rlhb-config: {key} is not read by any settings class"
        else:
            assert key in spliced, f"ConfigMap rlhb-config: {key} is neither a setting nor used as $({key})"
    for name, _, container in _containers():
        defined = set(_config())
        for env in container.get("env", []):
            key = env["name"]
            if key.startswith("RLHB_"):
                assert key in KNOWN, f"{name}: {key} is not read by any settings class"
            else:
                assert key in spliced, f"{name}: {key} is neither a setting nor used as $({key})"
            for ref in REFERENCE.findall(str(env.get("value", ""))):
                # Kubernetes substitutes only variables defined before (ConfigMap via envFrom, earlier env).
                assert ref in defined, f"{name}: {key} uses $({ref}) before it is defined"
            defined.add(key)


def test_role_commands_and_process_variables_match():
    for name, _, container in _containers():
        role = ROLES[name]
        assert container["command"] == ["rlhb", role], name
        prefix = {"api": "RLHB_API_", "aggregator": "RLHB_AGG_", "trainer": "RLHB_TRAINER_"}[role]
        for env in container.get("env", []):
            if env["name"].startswith(("RLHB_API_", "RLHB_AGG_", "RLHB_TRAINER_")):
                assert env["name"].startswith(prefix), f"{name} sets {env['name']}, which only another role reads"


def test_references_resolve():
    secrets, config_maps, claims = _secret_keys(), _kind("ConfigMap"), _kind("PersistentVolumeClaim")
    template = yaml.safe_load_all((K8S / "secret.example.yaml").read_text())
    assert {d["metadata"]["name"] for d in template if d} == set(secrets)
    for name, deployment, container in _containers():
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] in config_maps, name
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets.get(ref["name"], set()), f"{name}: secret {ref} is not in the template"
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"].get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, name
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, name
        # Files the settings point at are mounted where they say.
        for key in ("RLHB_KAFKA_SSL_CAFILE", "RLHB_KAFKA_SSL_CERTFILE", "RLHB_KAFKA_SSL_KEYFILE"):
            if key in _config():
                path = _config()[key]
                assert any(path.startswith(m["mountPath"] + "/") for m in container["volumeMounts"]), (name, key)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name


def test_api_probes_port_and_service():
    api = _kind("Deployment")["rlhb-api"]["spec"]["template"]
    (container,) = api["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(env["RLHB_API_PORT"])
    assert env["RLHB_API_HOST"] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    from service.api.routes import health, ops

    assert "/healthz" in {r.path for r in health.router.routes}
    assert "/readyz" in {r.path for r in ops.router.routes}
    service = _kind("Service")["rlhb-api"]
    assert service["spec"]["selector"].items() <= api["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] in ports


def test_every_container_requests_resources_and_the_trainer_is_single():
    for name, _, container in _containers():
        requests = container["resources"]["requests"]
        assert requests.get("cpu") and requests.get("memory"), name
    trainer = _kind("Deployment")["rlhb-trainer"]["spec"]
    assert trainer["replicas"] == 1 and trainer["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize("cls", [ApiSettings, AggregatorSettings, TrainerSettings])
def test_the_example_configuration_passes_settings_validation(cls, tmp_path, monkeypatch):
    """The ConfigMap plus the Secret template, as a pod of each role sees them, are valid settings
    (the CA file is the one thing replaced: it exists only in the pod)."""
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    role = {ApiSettings: "rlhb-api", AggregatorSettings: "rlhb-aggregator", TrainerSettings: "rlhb-trainer"}[cls]
    (container,) = _kind("Deployment")[role]["spec"]["template"]["spec"]["containers"]
    secret = _kind("Secret")["rlhb-secrets"]["stringData"]
    env = dict(_config())
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = REFERENCE.sub(lambda m: env[m.group(1)], item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secret[ref["key"]]
    env["RLHB_KAFKA_SSL_CAFILE"] = str(ca)
    for key in [k for k in os.environ if k.startswith("RLHB_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = cls()
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.redis_url.startswith("rediss://:replace-with-the-redis-password@")


def test_vllm_replicas_are_addressable_one_by_one_and_serve_the_registry_path():
    """vLLM (vllm.yaml) runs as a StatefulSet behind a headless Service, and the API's
    RLHB_API_VLLM_URLS names every replica by its stable pod DNS name (rlhb-vllm-N.rlhb-vllm):
    the API must load each version into every replica, which a load-balanced Service could not
    promise. Runtime LoRA updating is on, LoRA rank fits the trainer's, the adapter volume is at
    the API's RLHB_ADAPTER_DIR (the lora_path the API sends), probes answer on /health, one GPU."""
    (sts,) = [d for d in _docs() if d.get("kind") == "StatefulSet"]
    service = _kind("Service")[sts["spec"]["serviceName"]]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    (vllm,) = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in vllm["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    args = vllm["args"]
    assert "--enable-lora" in args
    from trainer.config import PPOConfig

    assert int(args[args.index("--max-lora-rank") + 1]) >= PPOConfig().lora_r
    port = next(p["containerPort"] for p in vllm["ports"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert vllm[probe]["httpGet"]["path"] == "/health", probe
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["mountPath"]: m["name"] for m in vllm["volumeMounts"]}
    assert mounts[_config()["RLHB_ADAPTER_DIR"]] == "adapters"

    (api,) = _kind("Deployment")["rlhb-api"]["spec"]["template"]["spec"]["containers"]
    api_env = {e["name"]: e.get("value") for e in api["env"]}
    assert api_env["RLHB_API_BACKEND"] == "vllm"
    name, svc = sts["metadata"]["name"], service["metadata"]["name"]
    expected = [f"http://{name}-{i}.{svc}:{port}" for i in range(sts["spec"]["replicas"])]
    assert api_env["RLHB_API_VLLM_URLS"].split(",") == expected
    trainer = _kind("Deployment")["rlhb-trainer"]["spec"]["template"]["spec"]["containers"][0]
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == 1
