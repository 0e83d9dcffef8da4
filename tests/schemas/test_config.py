"""Config loading: unknown keys, wrong types and missing secrets fail with the file or variable and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.config import BrokerConfig, EdgeConfig, HubConfig, load_config
from schemas.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "edge.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path: Path, model: type = EdgeConfig, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, model, env=env or {})
    return caught.value.problems


def test_valid_config_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "edge_id: line-3\nbroker:\n  host: broker.local\n"), EdgeConfig, env={})
    assert config.edge_id == "line-3"
    assert config.broker.host == "broker.local"
    assert config.broker.port == 1883
    assert config.broker.topic_prefix == "fedinspect/v1"
    assert config.http.host == "127.0.0.1"


def test_unknown_key_is_named_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "edge_id: e1\nbroker:\n  hostname: x\n")
    assert problems(path) == [
        f"{path}: broker.hostname: unknown key (check the spelling; see the JSON Schema "
        "from `fedinspect schemas export`) (got 'x')"
    ]


def test_wrong_type_is_named_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "edge_id: e1\nbroker:\n  port: eighteen\n")
    [problem] = problems(path)
    assert problem.startswith(f"{path}: broker.port: ")
    assert "integer" in problem and "'eighteen'" in problem


def test_missing_required_key(tmp_path: Path) -> None:
    path = write(tmp_path, "broker: {}\n")
    assert problems(path) == [f"{path}: edge_id: required key is missing"]


def test_missing_required_secret_names_the_key_and_how_to_set_it(tmp_path: Path) -> None:
    path = write(tmp_path, "edge_id: e1\nbroker:\n  username: edge-1\n")
    [problem] = problems(path)
    assert problem.startswith(f"{path}: broker.password: required when username is set")
    assert "FEDINSPECT__BROKER__PASSWORD" in problem


def test_secret_from_environment_is_hidden(tmp_path: Path) -> None:
    path = write(tmp_path, "edge_id: e1\nbroker:\n  username: edge-1\n")
    config = load_config(path, EdgeConfig, env={"FEDINSPECT__BROKER__PASSWORD": "s3cret: yes"})
    assert config.broker.password is not None
    assert config.broker.password.get_secret_value() == "s3cret: yes"  # taken verbatim, not parsed as YAML
    assert "s3cret" not in repr(config) and "s3cret" not in config.model_dump_json()


def test_secret_from_file(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("from-file\n")
    path = write(tmp_path, f"edge_id: e1\nbroker:\n  username: edge-1\n  password_file: {secret}\n")
    config = load_config(path, EdgeConfig, env={})
    assert config.broker.password is not None
    assert config.broker.password.get_secret_value() == "from-file"


def test_missing_password_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "edge_id: e1\nbroker:\n  username: u\n  password_file: /nonexistent/pw\n")
    assert any(p.startswith(f"{path}: broker.password_file: ") for p in problems(path))


def test_secret_values_never_appear_in_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "edge_id: e1\nbroker:\n  password: [not, a, string, hunter2]\n")
    text = "\n".join(problems(path))
    assert "broker.password" in text
    assert "hunter2" not in text


def test_environment_override_and_its_errors_name_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "edge_id: e1\n")
    config = load_config(path, EdgeConfig, env={"FEDINSPECT__BROKER__PORT": "8883", "FEDINSPECT__HTTP__PORT": "9000"})
    assert (config.broker.port, config.http.port) == (8883, 9000)
    [problem] = problems(path, env={"FEDINSPECT__BROKER__PORT": "http"})
    assert problem.startswith("FEDINSPECT__BROKER__PORT (environment): broker.port: ")
    [problem] = problems(path, env={"FEDINSPECT__BROKER__NOPE": "1"})
    assert problem.startswith("FEDINSPECT__BROKER__NOPE (environment): broker.nope: unknown key")


def test_other_environment_variables_are_ignored(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "edge_id: e1\n"), EdgeConfig, env={"FEDINSPECT_HOME": "/x", "PATH": "/bin"})
    assert config.edge_id == "e1"


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    [problem] = problems(missing)
    assert problem.startswith(f"{missing}: cannot read config file")
    bad = write(tmp_path, "edge_id: e1\nbroker: [unclosed\n")
    [problem] = problems(bad)
    assert problem.startswith(f"{bad}: not valid YAML at line 3")
    scalar = write(tmp_path, "just a string\n")
    assert problems(scalar) == [f"{scalar}: the top level must be a mapping of keys, got str"]


def test_chunk_size_must_fit_the_payload_limit() -> None:
    with pytest.raises(ValueError, match="chunk_size_bytes"):
        BrokerConfig(max_payload_bytes=128 * 1024, chunk_size_bytes=128 * 1024)
    assert BrokerConfig(max_payload_bytes=128 * 1024, chunk_size_bytes=64 * 1024).chunk_size_bytes == 65536
    with pytest.raises(ValueError, match="chunk_size_bytes"):
        BrokerConfig(chunk_size_bytes=32 * 1024)


def test_password_to_a_remote_broker_needs_tls() -> None:
    with pytest.raises(ValueError, match="needs TLS"):
        BrokerConfig(host="broker.plant.local", username="u", password="p")


def test_topic_prefix_is_validated() -> None:
    with pytest.raises(ValueError, match="topic prefix"):
        BrokerConfig(topic_prefix="fedinspect/#")


def test_hub_config_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "{}\n", "hub.yaml"), HubConfig, env={})
    assert config.hub_id == "hub"
    assert config.http.port == 8090
    assert config.database_url is None


def test_a_default_or_folder_template_needs_the_templates_folder(tmp_path: Path) -> None:
    text = "edge_id: line-1\ninspection:\n  default_template: board-a\n"
    assert any("default_template 'board-a' needs templates_dir" in p for p in problems(write(tmp_path, text)))
    text = f"edge_id: line-1\nsources:\n  folder:\n    path: {tmp_path / 'in'}\n    template: board-a\n"
    assert any(
        "sources.folder.template 'board-a' needs inspection.templates_dir" in p for p in problems(write(tmp_path, text))
    )
    text += f"inspection:\n  templates_dir: {tmp_path / 'templates'}\n"
    config = load_config(write(tmp_path, text), EdgeConfig, env={})
    assert config.sources.folder is not None and config.sources.folder.template == "board-a"
    assert config.inspection.templates_dir == tmp_path / "templates"


def test_the_norm_policy_defaults_and_the_removed_z_score_key_says_what_replaced_it(tmp_path: Path) -> None:
    aggregation = load_config(write(tmp_path, "{}\n", "hub.yaml"), HubConfig, env={}).aggregation
    assert (aggregation.clip_factor, aggregation.max_relative_norm, aggregation.max_update_norm) == (2.0, 10.0, None)
    assert aggregation.max_examples_per_update == 10_000
    [problem] = problems(write(tmp_path, "aggregation:\n  max_z_score: 3.5\n", "hub.yaml"), HubConfig)
    assert "aggregation" in problem and "max_z_score was removed" in problem and "clip_factor" in problem
    [problem] = problems(write(tmp_path, "aggregation:\n  clip_factor: 0.5\n", "hub.yaml"), HubConfig)
    assert "aggregation.clip_factor" in problem


def test_transfer_bounds_have_defaults_and_must_let_the_largest_artifact_in(tmp_path: Path) -> None:
    hub = load_config(write(tmp_path, "hub_id: hub\n", "hub.yaml"), HubConfig, env={})
    assert hub.update_intake.max_update_bytes == 1024**3
    assert hub.update_intake.max_partial_updates_per_edge == 4
    assert hub.update_intake.max_partial_bytes_per_edge == 2 * 1024**3
    edge = load_config(write(tmp_path, "edge_id: e1\n"), EdgeConfig, env={})
    assert (edge.models.max_model_bytes, edge.models.max_partial_transfers) == (2 * 1024**3, 4)
    path = write(tmp_path, "update_intake:\n  max_update_bytes: 2000000\n  max_partial_bytes_per_edge: 1000000\n")
    [problem] = problems(path, HubConfig)
    assert "max_partial_bytes_per_edge (1000000) must be at least max_update_bytes (2000000)" in problem
    [problem] = problems(write(tmp_path, "edge_id: e1\nmodels:\n  max_partial_bytes: 4096\n"))
    assert "max_partial_bytes (4096) must be at least max_model_bytes" in problem
