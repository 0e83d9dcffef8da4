"""Envelopes and bodies of every JSON message on the wire.

Every message is an envelope ``{schema_version, type, id, sent_at, sender, body}``; ``type`` selects the body
model. ``parse_message`` turns bytes into the right frozen envelope or raises ``pydantic.ValidationError``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import (
    AwareDatetime,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    StringConstraints,
    TypeAdapter,
    model_serializer,
    model_validator,
)

from schemas.base import ContractModel, Identifier, MessageId, new_message_id, utc_now
from schemas.manifests import FileDigest, ModelManifest, SignedManifest


class Envelope(ContractModel):
    """Fields every message carries. Subclasses fix ``type`` and ``body``."""

    schema_version: Literal[1] = Field(1, title="Schema version", description="Version of the wire contract.")
    type: str = Field(title="Message type", description="Selects the body schema.")
    id: MessageId = Field(
        default_factory=new_message_id,
        title="Message id",
        description="Unique id of this message; commands are acknowledged by it.",
    )
    sent_at: AwareDatetime = Field(
        default_factory=utc_now, title="Sent at", description="When the sender built the message (UTC)."
    )
    sender: Identifier = Field(title="Sender", description="Edge id or hub id of the sender.")

    def to_json_bytes(self) -> bytes:
        """UTF-8 JSON of the whole envelope, as published."""
        return self.model_dump_json().encode("utf-8")


# --- status ------------------------------------------------------------------------------------------------


class Role(StrEnum):
    EDGE = "edge"
    HUB = "hub"


class RoundState(StrEnum):
    OPEN = "open"
    COLLECTING = "collecting"
    AGGREGATING = "aggregating"
    PUBLISHED = "published"
    FAILED = "failed"


class RoundSummary(ContractModel):
    """A round as a status message shows it."""

    round_id: Identifier = Field(title="Round", description="Round id.")
    model_name: Identifier = Field(title="Model name", description="Model line of the round.")
    state: RoundState = Field(title="State", description="Current state of the round.")
    updates_received: int = Field(0, title="Updates", description="Valid updates received so far.", ge=0)


class StatusBody(ContractModel):
    """Retained status of an edge or the hub: birth "online" with a health summary, or the last will "offline"."""

    state: Literal["online", "offline"] = Field(
        title="State", description="online (birth or refresh) or offline (graceful stop or last will)."
    )
    role: Role = Field(title="Role", description="Whether the sender is an edge agent or the hub.")
    software_version: str | None = Field(
        None, title="Software version", description="fedinspect version of the sender."
    )
    model_versions: dict[Identifier, int] = Field(
        default_factory=dict, title="Model versions", description="Model name -> version in use."
    )
    execution_provider: str | None = Field(
        None, title="Execution provider", description="ONNX Runtime provider actually in use (edge)."
    )
    backlogs: dict[str, int] = Field(
        default_factory=dict,
        title="Backlogs",
        description="Queue name -> items waiting, e.g. {'outbox': 0, 'review': 3}.",
    )
    rounds: list[RoundSummary] = Field(
        default_factory=list, title="Rounds", description="Rounds the hub is running (hub only)."
    )
    last_error: str | None = Field(
        None, title="Last error", description="Most recent error, if any, for monitoring.", max_length=2000
    )


class StatusMessage(Envelope):
    type: Literal["status"] = Field("status", title="Message type", description="Always 'status'.")
    body: StatusBody = Field(title="Body", description="The status.")


# --- inspection events ---------------------------------------------------------------------------------------


class Verdict(StrEnum):
    GOOD = "good"
    DEFECTIVE = "defective"


class ReviewSeverity(StrEnum):
    ALERT = "alert"
    UNCERTAIN = "uncertain"


class DetectionBox(ContractModel):
    """One detected defect in original image pixels."""

    x1: float = Field(title="x1", description="Left edge in original image pixels.", ge=0)
    y1: float = Field(title="y1", description="Top edge in original image pixels.", ge=0)
    x2: float = Field(title="x2", description="Right edge in original image pixels.", ge=0)
    y2: float = Field(title="y2", description="Bottom edge in original image pixels.", ge=0)
    class_id: int = Field(title="Class index", description="Index into the detector's classes.", ge=0)
    class_name: str = Field(title="Class name", description="Name of the class.", min_length=1)
    score: float = Field(title="Score", description="Detection confidence in [0, 1].", ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.x2 < self.x1 or self.y2 < self.y1:
            raise ValueError(f"box corners out of order: ({self.x1}, {self.y1}) - ({self.x2}, {self.y2})")
        return self


class StageLatency(ContractModel):
    """Wall time per pipeline stage, in milliseconds."""

    decode_ms: float = Field(title="Decode", description="Image decoding and checks.", ge=0)
    classify_ms: float = Field(title="Classify", description="Classifier preprocess, run, postprocess.", ge=0)
    detect_ms: float | None = Field(None, title="Detect", description="Detector stage; null when skipped.", ge=0)
    total_ms: float = Field(title="Total", description="End to end, decode to result.", ge=0)


class InspectionEventBody(ContractModel):
    """The result of inspecting one image."""

    sample_id: Identifier = Field(title="Sample", description="Id of the stored sample in the edge buffer.")
    image_sha256: str = Field(
        title="Image SHA-256", description="SHA-256 of the image bytes.", pattern=r"^[0-9a-f]{64}$"
    )
    source: str = Field(
        title="Source", description="Where the image came from, e.g. 'folder', 'http', 'mqtt'.", min_length=1
    )
    captured_at: AwareDatetime = Field(title="Captured at", description="When the image was received (UTC).")
    image_width: int = Field(title="Width", description="Original image width in pixels.", ge=1)
    image_height: int = Field(title="Height", description="Original image height in pixels.", ge=1)
    verdict: Verdict = Field(title="Verdict", description="good or defective.")
    score: float = Field(
        title="Defect score", description="Classifier probability that the image is defective.", ge=0, le=1
    )
    review: ReviewSeverity | None = Field(
        None, title="Review", description="Set when the result was routed to the review queue."
    )
    boxes: list[DetectionBox] = Field(
        default_factory=list, title="Boxes", description="Detected defects (empty when the detector was skipped)."
    )
    model_versions: dict[Identifier, int] = Field(
        title="Model versions", description="Model name -> version that produced this result."
    )
    latency: StageLatency = Field(title="Latency", description="Time per pipeline stage.")


class InspectionEventMessage(Envelope):
    type: Literal["inspection_event"] = Field(
        "inspection_event", title="Message type", description="Always 'inspection_event'."
    )
    body: InspectionEventBody = Field(title="Body", description="The inspection result.")


# --- commands ------------------------------------------------------------------------------------------------


class CommandBase(ContractModel):
    expires_at: AwareDatetime = Field(
        title="Expires at", description="After this time the edge rejects the command as expired (UTC)."
    )

    def is_expired(self, now: datetime | None = None) -> bool:
        return (now or utc_now()) >= self.expires_at


class TrainNowCommand(CommandBase):
    action: Literal["train_now"] = Field(title="Action", description="Start local training now.")
    model_name: Identifier = Field(title="Model name", description="Model line to train.")
    round_id: Identifier | None = Field(None, title="Round", description="Round to answer, if any.")


class RollbackCommand(CommandBase):
    action: Literal["rollback"] = Field(title="Action", description="Restore an earlier installed model.")
    model_name: Identifier = Field(title="Model name", description="Model line to roll back.")
    to_version: int | None = Field(
        None, title="Version", description="Version to restore; null = the previously installed one.", ge=0
    )


class SetConfigCommand(CommandBase):
    action: Literal["set_config"] = Field(title="Action", description="Change runtime settings.")
    changes: dict[
        Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")],
        JsonValue,
    ] = Field(
        title="Changes",
        description="Dotted config key -> new value, e.g. {'review.low': 0.4}; validated like the config file.",
        min_length=1,
    )


class PinModelCommand(CommandBase):
    action: Literal["pin_model"] = Field(title="Action", description="Pin (or unpin) a model version.")
    model_name: Identifier = Field(title="Model name", description="Model line to pin.")
    version: int | None = Field(
        None, title="Version", description="Version to stay on; null unpins and follows the hub again.", ge=0
    )


class ReportStatusCommand(CommandBase):
    action: Literal["report_status"] = Field(title="Action", description="Publish a fresh status now.")


CommandBody = Annotated[
    TrainNowCommand | RollbackCommand | SetConfigCommand | PinModelCommand | ReportStatusCommand,
    Field(discriminator="action", title="Command", description="The command, selected by 'action'."),
]


class CommandMessage(Envelope, SignedManifest):
    """A hub command, signed by the hub's key over its canonical form (id, expiry and target included), so neither
    an edge that can write to the broker nor the broker itself can forge one, alter one or redirect it."""

    type: Literal["command"] = Field("command", title="Message type", description="Always 'command'.")
    to: Identifier | None = Field(
        None,
        title="To",
        description="The edge the command is for; edges refuse a command addressed to another edge (or to none).",
    )
    body: CommandBody


class AckOutcome(StrEnum):
    ACCEPTED = "accepted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"
    DUPLICATE = "duplicate"


class CommandAckBody(ContractModel):
    """The edge's answer to a command id; a replayed id is answered 'duplicate' and not run again."""

    command_id: MessageId = Field(title="Command id", description="Envelope id of the command answered.")
    action: str = Field(title="Action", description="Action of the command answered.", min_length=1)
    outcome: AckOutcome = Field(title="Outcome", description="What happened to the command.")
    detail: str | None = Field(None, title="Detail", description="Human-readable reason or result.")
    result: dict[str, JsonValue] = Field(
        default_factory=dict, title="Result", description="Structured result, e.g. the restored version."
    )


class CommandAckMessage(Envelope):
    type: Literal["command_ack"] = Field("command_ack", title="Message type", description="Always 'command_ack'.")
    body: CommandAckBody = Field(title="Body", description="The acknowledgement.")


# --- rounds and models ---------------------------------------------------------------------------------------


class TrainScope(StrEnum):
    """Which tensors local training may change."""

    ALL = "all"
    HEAD = "head"
    """Only the classifier head: the pretrained backbone stays frozen (weights and BatchNorm statistics), so its
    entries in the update are exact zeros that compress to almost nothing."""


class TrainingConfig(ContractModel):
    """Local training settings the hub asks for in a round."""

    local_epochs: int = Field(1, title="Local epochs", description="Epochs over the local data.", ge=1, le=1000)
    batch_size: int = Field(16, title="Batch size", description="Local mini-batch size.", ge=1, le=4096)
    learning_rate: float = Field(1e-3, title="Learning rate", description="Local optimizer step size.", gt=0)
    proximal_mu: float = Field(
        0.0, title="FedProx mu", description="Weight of the FedProx proximal term; 0 disables it.", ge=0
    )
    max_train_seconds: int = Field(
        3600, title="Time limit", description="Upper bound on local training wall time.", ge=1
    )
    train_scope: TrainScope = Field(
        TrainScope.ALL,
        title="Train scope",
        description="all: fine-tune every tensor; head: only the classifier head (torchvision classifiers), with the "
        "backbone frozen and its BatchNorm statistics unchanged.",
    )

    @model_serializer(mode="wrap")
    def _omit_default_scope(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        # Edges that predate this field refuse unknown keys: round announcements that train everything (the
        # default) must stay readable by them, so only a head-only round carries the key.
        data: dict[str, object] = handler(self)
        if self.train_scope == TrainScope.ALL:
            data.pop("train_scope", None)
        return data


class RoundAnnouncementBody(ContractModel):
    """An open (or just closed) federated round, retained on round/{model_name}."""

    round_id: Identifier = Field(title="Round", description="Round id.")
    model_name: Identifier = Field(title="Model name", description="Model line trained in this round.")
    base_version: int = Field(title="Base version", description="Global version edges train from.", ge=0)
    state: RoundState = Field(title="State", description="State of the round.")
    opened_at: AwareDatetime = Field(title="Opened at", description="When the round opened (UTC).")
    deadline: AwareDatetime = Field(title="Deadline", description="Updates after this time are late (UTC).")
    min_updates: int = Field(title="k", description="Updates needed to aggregate before the deadline.", ge=1)
    strategy: str = Field(title="Strategy", description="Aggregation strategy, e.g. 'fedavg'.", min_length=1)
    training: TrainingConfig = Field(title="Training", description="Local training settings for this round.")

    @model_validator(mode="after")
    def _deadline_after_open(self) -> Self:
        if self.deadline <= self.opened_at:
            raise ValueError("deadline must be after opened_at")
        return self


class RoundAnnouncementMessage(Envelope):
    type: Literal["round_announcement"] = Field(
        "round_announcement", title="Message type", description="Always 'round_announcement'."
    )
    body: RoundAnnouncementBody = Field(title="Body", description="The round.")


class ArtifactRef(ContractModel):
    """Where and how to fetch the packed bundle of a model version over chunked transfer."""

    transfer_id: Identifier = Field(title="Transfer", description="Id carried by every chunk of the artifact.")
    digest: FileDigest = Field(title="Digest", description="Size and SHA-256 of the whole packed artifact.")
    chunk_size: int = Field(title="Chunk size", description="Payload bytes per chunk.", ge=1024)
    chunk_count: int = Field(title="Chunks", description="Number of chunks.", ge=1)


class ModelAnnouncementBody(ContractModel):
    """The current global model of a line, retained on model/{name}/announce."""

    manifest: ModelManifest = Field(title="Manifest", description="The signed manifest of the bundle.")
    artifact: ArtifactRef = Field(title="Artifact", description="How to download the bundle.")


class ModelAnnouncementMessage(Envelope):
    type: Literal["model_announcement"] = Field(
        "model_announcement", title="Message type", description="Always 'model_announcement'."
    )
    body: ModelAnnouncementBody = Field(title="Body", description="The announcement.")


# --- transfers -----------------------------------------------------------------------------------------------


class TransferState(StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    REJECTED = "rejected"


MAX_LISTED_MISSING = 4096


class TransferStatusBody(ContractModel):
    """The receiver's view of a chunked transfer: progress, what to (re)send, or the final verdict."""

    transfer_id: Identifier = Field(title="Transfer", description="The transfer this status is about.")
    state: TransferState = Field(title="State", description="receiving, complete, or rejected (final).")
    received: int = Field(0, title="Received", description="Chunks stored so far.", ge=0)
    count: int | None = Field(None, title="Count", description="Chunks in the transfer, once known.", ge=1)
    missing: list[int] | None = Field(
        None,
        title="Missing",
        description="Chunk indices the receiver lacks and asks for; null = it has seen nothing yet (send all).",
        max_length=MAX_LISTED_MISSING,
    )
    request: bool = Field(
        False,
        title="Resend request",
        description=(
            "true: the receiver asks for the missing chunks to be sent (again); false: a progress report, whose "
            "missing list may include chunks still on their way and must not trigger a resend."
        ),
    )
    reason: str | None = Field(None, title="Reason", description="Why the transfer was rejected.", max_length=2000)


class TransferStatusMessage(Envelope):
    type: Literal["transfer_status"] = Field(
        "transfer_status", title="Message type", description="Always 'transfer_status'."
    )
    body: TransferStatusBody = Field(title="Body", description="The transfer status.")


Message = Annotated[
    StatusMessage
    | InspectionEventMessage
    | CommandMessage
    | CommandAckMessage
    | RoundAnnouncementMessage
    | ModelAnnouncementMessage
    | TransferStatusMessage,
    Field(discriminator="type"),
]
MESSAGE_TYPES: tuple[type[Envelope], ...] = (
    StatusMessage,
    InspectionEventMessage,
    CommandMessage,
    CommandAckMessage,
    RoundAnnouncementMessage,
    ModelAnnouncementMessage,
    TransferStatusMessage,
)

_message_adapter: TypeAdapter[Message] = TypeAdapter(Message)


def parse_message(data: bytes | str) -> Envelope:
    """Parse any message of the contract; raises pydantic.ValidationError naming the bad field."""
    return _message_adapter.validate_json(data)
