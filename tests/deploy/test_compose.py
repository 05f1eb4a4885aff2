"""docker-compose.yml cannot run here (no Docker engine); validate it instead: it parses,
every build context and Dockerfile exists, every RLHB_* variable is a real setting, and
the API port mapping matches the API's port setting."""

from __future__ import annotations

from pathlib import Path

import yaml

from core.settings import AggregatorSettings, ApiSettings, CommonSettings, TrainerSettings

ROOT = Path(__file__).resolve().parents[2]


def _env_names(cls) -> set[str]:
    """Every environment variable name a settings class reads."""
    names: set[str] = set()
    prefix = cls.model_config.get("env_prefix", "")
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        if alias is not None and hasattr(alias, "choices"):
            names.update(str(c).upper() for c in alias.choices)
        else:
            names.add(f"{prefix}{name}".upper())
    return names


KNOWN = _env_names(ApiSettings) | _env_names(AggregatorSettings) | _env_names(TrainerSettings)


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_parses_and_has_the_services():
    services = _compose()["services"]
    assert {"kafka", "redis", "api", "aggregator", "trainer", "vllm"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["vllm"]["profiles"] == ["vllm"]
    assert "--enable-lora" in services["vllm"]["command"]


def test_every_build_context_and_dockerfile_exists():
    for name, service in _compose()["services"].items():
        if "build" in service:
            context = ROOT / service["build"]["context"]
            assert context.is_dir(), name
            assert (context / service["build"]["dockerfile"]).is_file(), name
        else:
            assert service.get("image"), f"{name} has neither build nor image"


def test_every_rlhb_variable_is_a_setting_and_roles_match_cli():
    for name, service in _compose()["services"].items():
        env = service.get("environment") or {}
        for key in env:
            if key.startswith("RLHB_"):
                assert key in KNOWN, f"{name}: {key} is not read by any settings class"
    services = _compose()["services"]
    assert services["api"]["command"] == ["rlhb", "api"]
    assert services["aggregator"]["command"] == ["rlhb", "aggregator"]
    assert services["trainer"]["command"] == ["rlhb", "trainer"]


def test_api_port_mapping_matches_the_port_setting():
    api = _compose()["services"]["api"]
    port = int(api["environment"]["RLHB_API_PORT"])
    assert f"{port}:{port}" in api["ports"]
    assert ApiSettings.model_fields["port"].default == port


def test_common_fields_are_named_the_same_in_every_process():
    common = _env_names(CommonSettings)
    for cls in (ApiSettings, AggregatorSettings, TrainerSettings):
        assert common <= _env_names(cls)


def test_the_image_copies_every_package_it_installs():
    """`pip install .` in deploy/Dockerfile installs the packages pyproject.toml finds; each must
    have been copied into the image first (core/ once was not, and `rlhb` failed to import)."""
    import re

    # (a regex, not tomllib: that module needs Python 3.11 and the project supports 3.10)
    found = re.search(
        r"\[tool\.setuptools\.packages\.find\]\s*include\s*=\s*\[([^\]]*)\]", (ROOT / "pyproject.toml").read_text()
    )
    assert found, "pyproject.toml has no [tool.setuptools.packages.find] include list"
    include = re.findall(r'"([^"]+)"', found.group(1))
    assert include
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    for pattern in include:
        package = pattern.rstrip("*")
        assert f"COPY {package} ./{package}" in dockerfile, f"deploy/Dockerfile does not copy {package}/"


# --------------------------------------------------------------------------- the compose spec and the vllm profile
# `docker compose config` cannot run here (the docker CLI has no compose plugin and there is no
# engine), so the file is validated against the Compose Specification's own JSON Schema, vendored
# from github.com/compose-spec/compose-spec (schema/compose-spec.json at commit
# 170098ba07d9f53c383a41bfd4c5166b0a4529a6, Apache-2.0), with jsonschema_rs (a dev dependency).
def _spec_errors(doc: dict) -> list[str]:
    import json

    import jsonschema_rs

    schema = json.loads((Path(__file__).with_name("compose-spec.json")).read_text())
    return [str(e).splitlines()[0] for e in jsonschema_rs.validator_for(schema).iter_errors(doc)]


def test_compose_file_follows_the_compose_specification():
    doc = _compose()
    assert _spec_errors(doc) == []
    # the check has teeth: a misspelt key in a service is refused
    broken = {**doc, "services": {**doc["services"], "vllm": {**doc["services"]["vllm"], "enviroment": {}}}}
    assert any("enviroment" in e for e in _spec_errors(broken))


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_vllm_profile_serves_the_trainers_lora_with_runtime_updating():
    from trainer.config import PPOConfig

    services = _compose()["services"]
    vllm = services["vllm"]
    assert {"vllm"} == set(vllm["profiles"]) == set(services["api-vllm"]["profiles"])
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"  # else no load/unload routes
    assert "--enable-lora" in vllm["command"]
    assert int(_flag(vllm["command"], "--max-lora-rank")) >= PPOConfig().lora_r  # the trainer's adapters fit
    # the API's adapters plus one rollout adapter of the trainer
    assert int(_flag(vllm["command"], "--max-loras")) >= ApiSettings.model_fields["max_loaded_adapters"].default + 1


def test_vllm_profile_shares_one_adapter_volume_at_the_same_path():
    services = _compose()["services"]
    adapter_dir = services["api-vllm"]["environment"]["RLHB_ADAPTER_DIR"]
    for name in ("api", "api-vllm", "trainer", "vllm"):
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
        assert mounts.get("/data") == "rlhb-data", name  # same volume, same mount point
    assert adapter_dir.startswith("/data/")
    # vLLM serves the base model the API tokenizes with (and the trainer trains on: base-model copies it)
    assert _flag(services["vllm"]["command"], "--model") == services["api-vllm"]["environment"]["RLHB_MODEL_PATH"]
    assert services["vllm"]["depends_on"]["base-model"]["condition"] == "service_completed_successfully"


def test_api_vllm_points_at_the_vllm_service_and_passes_validation(monkeypatch):
    services = _compose()["services"]
    env = services["api-vllm"]["environment"]
    assert env["RLHB_API_BACKEND"] == "vllm"
    assert services["api-vllm"]["depends_on"]["vllm"]["condition"] == "service_healthy"
    container_port = services["vllm"]["ports"][0].split(":")[1]
    settings_env = {
        **{k: v for k, v in env.items() if k.startswith("RLHB_") and k != "RLHB_MODEL_PATH"},
        "RLHB_API_ADMIN_TOKEN": "a-long-random-admin-token-0123",
        "RLHB_API_IMPRESSION_SECRET": "a-long-random-impression-secret-0123",
    }
    for key, value in settings_env.items():
        monkeypatch.setenv(key, value)
    settings = ApiSettings()
    assert settings.backend == "vllm"
    assert settings.vllm_replica_urls() == [f"http://vllm:{container_port}"]


def test_trainer_vllm_rollout_variables_in_the_comments_are_real_config_fields():
    import re

    from trainer.config import PPOConfig, apply_overrides

    text = (ROOT / "docker-compose.yml").read_text()
    found = dict(re.findall(r"RLHB_TRAINER_ALGO__([A-Z_]+): (\S+)", text))
    assert set(found) == {"ROLLOUT_BACKEND", "VLLM_URLS", "VLLM_LORA_DIR"}
    config = apply_overrides(PPOConfig(), {k.lower(): v for k, v in found.items()}, variable="RLHB_TRAINER_ALGO")
    assert config.rollout_backend == "vllm" and config.vllm_urls == "http://vllm:8000"
    assert config.vllm_lora_dir.startswith("/data/")  # on the volume vllm mounts
