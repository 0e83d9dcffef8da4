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


NON_FINITE_JSON = ["NaN", "Infinity", "-Infinity", '"NaN"', '"inf"', "1e999"]
"""What a JSON parser turns into a non-finite float: the literals Python writes, strings pydantic reads, overflow."""


def _with_metric(document: str, path: tuple[str, ...], literal: str) -> str:
    """``document`` (JSON) with the metric at ``path`` set to ``literal`` as written, e.g. a bare NaN."""
    data = json.loads(document)
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = "@METRIC@"
    return json.dumps(data).replace('"@METRIC@"', literal)


@pytest.mark.parametrize("literal", NON_FINITE_JSON)
@pytest.mark.parametrize(
    ("document", "path", "location"),
    [
        ("update", ("metrics_after", "mAP50"), "metrics_after.mAP50"),
        ("update", ("metrics_before", "loss"), "metrics_before.loss"),
        ("model", ("metrics", "mAP50"), "metrics.mAP50"),
    ],
)
def test_manifest_metrics_must_be_finite(document: str, path: tuple[str, ...], location: str, literal: str) -> None:
    """A signed manifest's NaN metric made the round's example-weighted metrics NaN (shown as null)."""
    model = manifests.UpdateManifest if document == "update" else ModelManifest
    sample = samples.update_manifest() if document == "update" else samples.model_manifest()
    with pytest.raises(ValidationError) as caught:
        model.model_validate_json(_with_metric(sample.model_dump_json(), path, literal))
    assert base.validation_problems(caught.value) == f"{location}: Input should be a finite number"
    with pytest.raises(ValidationError, match=location.replace(".", r"\.")):
        model.model_validate({**sample.model_dump(), path[0]: {path[1]: float("nan")}})


@pytest.mark.parametrize("literal", NON_FINITE_JSON)
def test_messages_carrying_a_manifest_refuse_non_finite_metrics(literal: str) -> None:
    announcement = samples.documents()["model_announcement"].model_dump_json()
    with pytest.raises(ValidationError, match=r"body\.manifest\.metrics\.mAP50"):
        parse_message(_with_metric(announcement, ("body", "manifest", "metrics", "mAP50"), literal))


def test_manifest_metrics_are_bounded_in_entries_and_name_length() -> None:
    sample = samples.update_manifest().model_dump()
    many = {f"m{i}": 0.5 for i in range(manifests.MAX_METRICS)}
    assert len(manifests.UpdateManifest.model_validate({**sample, "metrics_after": many}).metrics_after) == 64
    with pytest.raises(ValidationError, match=r"metrics_after\n.*at most 64 items"):
        manifests.UpdateManifest.model_validate({**sample, "metrics_after": {**many, "one-more": 0.5}})
    with pytest.raises(ValidationError, match=r"metrics_before\.x{65}\.\[key\]\n.*at most 64 characters"):
        manifests.UpdateManifest.model_validate({**sample, "metrics_before": {"x" * 65: 0.5}})
    with pytest.raises(ValidationError, match="at least 1 character"):
        ModelManifest.model_validate({**samples.model_manifest().model_dump(), "metrics": {"": 0.5}})


def test_other_numbers_of_a_signed_manifest_must_be_finite_too() -> None:
    manifest = samples.model_manifest().model_dump()
    with pytest.raises(ValidationError, match=r"input\.scale"):
        ModelManifest.model_validate({**manifest, "input": {**manifest["input"], "scale": float("inf")}})
    with pytest.raises(ValidationError, match=r"export\.parity_max_abs_diff"):
        ModelManifest.model_validate({**manifest, "export": {**manifest["export"], "parity_max_abs_diff": 1e999}})


def test_finite_metrics_keeps_what_a_manifest_can_carry() -> None:
    kept, dropped = manifests.finite_metrics(
        {"acc": 0.9, "loss": float("nan"), "big": float("inf"), "x" * 65: 1.0, "n": 3}
    )
    assert kept == {"acc": 0.9, "n": 3.0}
    assert dropped == ["big", "loss", "x" * 65]
    kept, dropped = manifests.finite_metrics({f"m{i:03d}": 1.0 for i in range(70)})
    assert len(kept) == manifests.MAX_METRICS and dropped == [f"m{i:03d}" for i in range(64, 70)]


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
