"""Every message and manifest round-trips through JSON, and the exported JSON Schema accepts what we send."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest
from pydantic import BaseModel, ValidationError

from schemas import base, config, manifests, messages
from schemas.jsonschema import DOCUMENT_TYPES, export_json_schemas, json_schema
from schemas.manifests import MAX_NUM_EXAMPLES, ModelManifest, UpdateManifest
from schemas.messages import CommandMessage, StatusMessage, parse_message
from tests.schemas import samples


def test_samples_cover_every_document_type() -> None:
    assert set(samples.documents()) == set(DOCUMENT_TYPES)


@pytest.mark.parametrize("name", sorted(DOCUMENT_TYPES))
def test_round_trip_json(name: str) -> None:
    document = samples.documents()[name]
    again = type(document).model_validate_json(document.model_dump_json())
    assert again == document


@pytest.mark.parametrize("name", [t.model_fields["type"].default for t in messages.MESSAGE_TYPES])
def test_parse_message_selects_the_type(name: str) -> None:
    document = samples.documents()[name]
    assert isinstance(document, messages.Envelope)
    parsed = parse_message(document.to_json_bytes())
    assert type(parsed) is type(document)
    assert parsed == document


@pytest.mark.parametrize("name", sorted(DOCUMENT_TYPES))
def test_exported_schema_validates_sample(name: str, tmp_path: Path) -> None:
    written = {p.name: p for p in export_json_schemas(tmp_path)}
    schema = json.loads(written[f"{name}.schema.json"].read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    sample = json.loads(samples.documents()[name].model_dump_json())
    assert list(validator.iter_errors(sample)) == []


def test_exported_schema_rejects_unknown_keys_and_wrong_types() -> None:
    validator = jsonschema.Draft202012Validator(json_schema("status"))
    sample = json.loads(samples.documents()["status"].model_dump_json())
    assert not validator.is_valid({**sample, "surprise": 1})
    assert not validator.is_valid({**sample, "body": {**sample["body"], "state": "sleeping"}})


def test_commands_are_discriminated_by_action() -> None:
    command = samples.pin_command()
    parsed = parse_message(command.to_json_bytes())
    assert isinstance(parsed, CommandMessage)
    assert parsed.body.action == "pin_model"
    bad = json.loads(command.model_dump_json())
    bad["body"]["action"] = "self_destruct"
    with pytest.raises(ValidationError, match="action"):
        parse_message(json.dumps(bad))


def test_command_expiry() -> None:
    command = samples.pin_command()
    assert not command.body.is_expired(samples.T0)
    assert command.body.is_expired(samples.T0 + timedelta(hours=2))


def test_messages_are_frozen_and_reject_unknown_keys() -> None:
    status = samples.documents()["status"]
    assert isinstance(status, StatusMessage)
    with pytest.raises(ValidationError):
        status.sender = "someone"  # type: ignore[misc]
    data = json.loads(status.model_dump_json())
    data["body"]["extra_field"] = 1
    with pytest.raises(ValidationError, match=r"body\.extra_field"):
        StatusMessage.model_validate(data)


def test_validation_errors_name_the_field() -> None:
    data = json.loads(samples.documents()["inspection_event"].model_dump_json())
    data["body"]["boxes"][0]["score"] = 1.5
    with pytest.raises(ValidationError, match=r"body\.boxes\.0\.score"):
        parse_message(json.dumps(data))


def test_naive_timestamps_are_rejected() -> None:
    data = json.loads(samples.documents()["status"].model_dump_json())
    data["sent_at"] = "2026-11-22T08:30:00"
    with pytest.raises(ValidationError, match="sent_at"):
        StatusMessage.model_validate(data)


def test_an_update_claiming_more_examples_than_a_database_integer_holds_is_refused_when_read() -> None:
    update = samples.update_manifest()
    assert UpdateManifest.model_validate({**update.model_dump(), "num_examples": MAX_NUM_EXAMPLES}).num_examples
    for claim in (2**31, 2**62, 2**64):
        with pytest.raises(ValidationError, match="num_examples"):
            UpdateManifest.model_validate({**update.model_dump(), "num_examples": claim})


def test_manifest_lineage_rules() -> None:
    manifest = samples.model_manifest()
    with pytest.raises(ValidationError, match="needs a parent"):
        ModelManifest.model_validate({**manifest.model_dump(), "version": 4, "parent": None})
    with pytest.raises(ValidationError, match="root model"):
        ModelManifest.model_validate({**manifest.model_dump(), "version": 0, "parent": 1})
    with pytest.raises(ValidationError, match="unique"):
        ModelManifest.model_validate({**manifest.model_dump(), "classes": ["a", "a"]})


def test_input_spec_channels_must_agree() -> None:
    spec = samples.model_manifest().input.model_dump()
    with pytest.raises(ValidationError, match="one per channel"):
        manifests.InputSpec.model_validate({**spec, "mean": (0.0, 0.0, 0.0)})
    with pytest.raises(ValidationError, match="requires color 'gray'"):
        manifests.InputSpec.model_validate({**spec, "color": "rgb"})


def test_int8_encoding_needs_quantization() -> None:
    with pytest.raises(ValidationError, match="quantization is required"):
        manifests.TensorEncoding(dtype="int8")
    with pytest.raises(ValidationError, match="not allowed"):
        manifests.TensorEncoding(dtype="fp16", quantization="per_tensor")


def test_canonical_bytes_exclude_signature_and_are_stable() -> None:
    signed = samples.model_manifest()
    unsigned = signed.model_copy(update={"signature": None})
    assert signed.canonical_bytes() == unsigned.canonical_bytes()
    assert b"signature" not in signed.canonical_bytes()
    reparsed = ModelManifest.model_validate_json(signed.model_dump_json(indent=2))
    assert reparsed.canonical_bytes() == signed.canonical_bytes()
    changed = signed.model_copy(update={"version": 4})
    assert changed.canonical_bytes() != signed.canonical_bytes()


def _contract_models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    for module in (base, config, manifests, messages):
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, base.ContractModel)
                and value.__module__ == module.__name__
            ):
                found.append(value)
    return found


@pytest.mark.parametrize("model", _contract_models(), ids=lambda m: m.__name__)
def test_every_field_has_title_and_description(model: type[BaseModel]) -> None:
    for name, field in model.model_fields.items():
        # A discriminated union field carries its title and description in its Annotated metadata.
        metadata_titles = [getattr(m, "title", None) for m in field.metadata]
        assert field.title or any(metadata_titles), f"{model.__name__}.{name} has no title"
        assert field.description or any(getattr(m, "description", None) for m in field.metadata), (
            f"{model.__name__}.{name} has no description"
        )


def test_train_scope_is_left_out_unless_head_only() -> None:
    everything = messages.TrainingConfig(local_epochs=2)
    # edges that predate the field refuse unknown keys: a default round must look exactly as before
    assert everything.model_dump(mode="json") == {
        "local_epochs": 2,
        "batch_size": 16,
        "learning_rate": 0.001,
        "proximal_mu": 0.0,
        "max_train_seconds": 3600,
    }
    head = messages.TrainingConfig(local_epochs=2, train_scope="head")
    assert head.model_dump(mode="json")["train_scope"] == "head"
    assert messages.TrainingConfig.model_validate_json(head.model_dump_json()) == head
    with pytest.raises(ValidationError, match="train_scope"):
        messages.TrainingConfig.model_validate({"train_scope": "backbone"})
