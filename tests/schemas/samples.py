"""One fully populated, valid sample of every document type of the contract, for round-trip and schema tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from schemas.config import BrokerConfig, EdgeConfig, HubConfig
from schemas.manifests import (
    ArchitectureSpec,
    ExportInfo,
    FileDigest,
    InputSpec,
    ModelManifest,
    Signature,
    TensorEncoding,
    UpdateManifest,
)
from schemas.messages import (
    AckOutcome,
    ArtifactRef,
    CommandAckBody,
    CommandAckMessage,
    CommandMessage,
    DetectionBox,
    InspectionEventBody,
    InspectionEventMessage,
    ModelAnnouncementBody,
    ModelAnnouncementMessage,
    PinModelCommand,
    ReviewSeverity,
    Role,
    RoundAnnouncementBody,
    RoundAnnouncementMessage,
    RoundState,
    RoundSummary,
    SetConfigCommand,
    StageLatency,
    StatusBody,
    StatusMessage,
    TrainingConfig,
    TransferState,
    TransferStatusBody,
    TransferStatusMessage,
)
from schemas.transfer import ChunkHeader

T0 = datetime(2026, 11, 22, 8, 30, tzinfo=UTC)
SIGNATURE = Signature(key_id="hub", value="A" * 86 + "==")


def model_manifest() -> ModelManifest:
    return ModelManifest(
        name="pcb-detector",
        version=3,
        parent=2,
        round_id="r-0003",
        task="detect",
        classes=["open", "short", "mousebite", "spur", "copper", "pin-hole"],
        input=InputSpec(width=640, height=640, channels=1, color="gray", resize="letterbox", mean=(0.0,), std=(1.0,)),
        architecture=ArchitectureSpec(framework="ultralytics", name="yolov8n.yaml", params={"nc": 6, "ch": 1}),
        files={
            "model.onnx": FileDigest(sha256="a" * 64, size_bytes=12_000_000),
            "weights.safetensors": FileDigest(sha256="b" * 64, size_bytes=12_100_000),
        },
        export=ExportInfo(opset=18, parity_max_abs_diff=3e-5),
        metrics={"mAP50": 0.71, "mAP50-95": 0.42},
        created_at=T0,
        signature=SIGNATURE,
    )


def update_manifest() -> UpdateManifest:
    return UpdateManifest(
        edge_id="edge-a",
        model_name="pcb-detector",
        round_id="r-0003",
        base_version=2,
        num_examples=120,
        metrics_before={"mAP50": 0.6},
        metrics_after={"mAP50": 0.66},
        encoding=TensorEncoding(dtype="int8", quantization="per_channel", compression="zstd"),
        payload=FileDigest(sha256="c" * 64, size_bytes=3_100_000),
        created_at=T0,
        signature=Signature(key_id="edge-a", value="B" * 86 + "=="),
    )


def documents() -> dict[str, BaseModel]:
    """Sample of each exported document, keyed like schemas.jsonschema.DOCUMENT_TYPES."""
    return {
        "status": StatusMessage(
            sender="hub",
            sent_at=T0,
            body=StatusBody(
                state="online",
                role=Role.HUB,
                software_version="0.1.0",
                rounds=[
                    RoundSummary(
                        round_id="r-0003", model_name="pcb-detector", state=RoundState.COLLECTING, updates_received=1
                    )
                ],
                backlogs={"updates": 1},
            ),
        ),
        "inspection_event": InspectionEventMessage(
            sender="edge-a",
            sent_at=T0,
            body=InspectionEventBody(
                sample_id="s-000123",
                image_sha256="d" * 64,
                source="http",
                captured_at=T0,
                image_width=640,
                image_height=640,
                verdict="defective",
                score=0.93,
                review=ReviewSeverity.ALERT,
                boxes=[DetectionBox(x1=10, y1=12.5, x2=40, y2=44, class_id=1, class_name="short", score=0.88)],
                model_versions={"pcb-classifier": 2, "pcb-detector": 3},
                latency=StageLatency(decode_ms=1.2, classify_ms=2.5, detect_ms=20.1, total_ms=24.0),
            ),
        ),
        "command": CommandMessage(
            sender="hub",
            sent_at=T0,
            body=SetConfigCommand(action="set_config", changes={"review.low": 0.4}, expires_at=T0 + timedelta(hours=1)),
        ),
        "command_ack": CommandAckMessage(
            sender="edge-a",
            sent_at=T0,
            body=CommandAckBody(
                command_id="e" * 32,
                action="rollback",
                outcome=AckOutcome.SUCCEEDED,
                detail="restored",
                result={"version": 2},
            ),
        ),
        "round_announcement": RoundAnnouncementMessage(
            sender="hub",
            sent_at=T0,
            body=RoundAnnouncementBody(
                round_id="r-0003",
                model_name="pcb-detector",
                base_version=2,
                state=RoundState.OPEN,
                opened_at=T0,
                deadline=T0 + timedelta(minutes=30),
                min_updates=2,
                strategy="fedavg",
                training=TrainingConfig(local_epochs=2, proximal_mu=0.01),
            ),
        ),
        "model_announcement": ModelAnnouncementMessage(
            sender="hub",
            sent_at=T0,
            body=ModelAnnouncementBody(
                manifest=model_manifest(),
                artifact=ArtifactRef(
                    transfer_id="m-pcb-detector-3",
                    digest=FileDigest(sha256="f" * 64, size_bytes=24_200_000),
                    chunk_size=262_144,
                    chunk_count=93,
                ),
            ),
        ),
        "transfer_status": TransferStatusMessage(
            sender="hub",
            sent_at=T0,
            body=TransferStatusBody(
                transfer_id="u-edge-a-0003", state=TransferState.RECEIVING, received=10, count=12, missing=[3, 7]
            ),
        ),
        "model_manifest": model_manifest(),
        "update_manifest": update_manifest(),
        "chunk_header": ChunkHeader(
            transfer_id="u-edge-a-0003",
            index=2,
            count=12,
            chunk_size=262_144,
            total_size=3_100_000,
            sha256="c" * 64,
            chunk_crc32=3_735_928_559,
        ),
        "edge_config": EdgeConfig(edge_id="edge-a", broker=BrokerConfig(port=1884)),
        "hub_config": HubConfig(),
    }


def pin_command() -> CommandMessage:
    return CommandMessage(
        sender="hub",
        body=PinModelCommand(
            action="pin_model", model_name="pcb-detector", version=2, expires_at=T0 + timedelta(hours=1)
        ),
    )
