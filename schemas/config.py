"""Process configuration: pydantic models for the edge, the hub and their broker link, and the YAML loader.

``load_config(path, EdgeConfig)`` reads one YAML file, applies environment overrides, validates (unknown keys
are errors) and raises ``ConfigError`` whose lines name the file or environment variable and the dotted key.

Environment overrides use the prefix ``FEDINSPECT__`` and ``__`` between levels, e.g.
``FEDINSPECT__BROKER__PORT=8883`` or ``FEDINSPECT__BROKER__PASSWORD=...``; values are parsed as YAML scalars.
Secrets (the broker password) come from the environment or from a file named in the config, never from logs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

import yaml
from pydantic import (
    BaseModel,
    Field,
    FilePath,
    SecretStr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from schemas.base import ContractModel, Identifier
from schemas.errors import ConfigError
from schemas.manifests import Compression, TensorDtype, TensorEncoding
from schemas.messages import TrainingConfig
from schemas.topics import DEFAULT_TOPIC_PREFIX, validate_topic_prefix

ENV_PREFIX = "FEDINSPECT__"
ENV_SEPARATOR = "__"
MIN_CHUNK_BYTES = 64 * 1024
MAX_CHUNK_BYTES = 1024 * 1024
CHUNK_FRAME_RESERVE = 1024
"""Bytes kept free in every chunk message for its self-describing header (transfer id, index, hashes)."""

_SECRET_KEYS = frozenset({"password", "secret", "token", "private_key"})


class MqttProtocol(StrEnum):
    V5 = "5"
    V311 = "3.1.1"


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class TlsConfig(ContractModel):
    """TLS towards the broker. With cert_file and key_file the client also authenticates with a certificate."""

    ca_file: FilePath = Field(title="CA file", description="PEM file of the CA that signed the broker's certificate.")
    cert_file: FilePath | None = Field(
        None, title="Client certificate", description="PEM client certificate (when the broker requires one)."
    )
    key_file: FilePath | None = Field(
        None, title="Client key", description="PEM private key of the client certificate (keep it mode 0600)."
    )
    verify_hostname: bool = Field(
        True, title="Verify hostname", description="Check that the broker certificate matches broker.host."
    )

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class BrokerConfig(ContractModel):
    """How a process reaches the MQTT broker, and the message size limits that broker imposes."""

    host: str = Field("127.0.0.1", title="Host", description="Broker host name or IP address.", min_length=1)
    port: int = Field(1883, title="Port", description="Broker TCP port (8883 is usual for TLS).", ge=1, le=65535)
    protocol: MqttProtocol = Field(
        MqttProtocol.V5, title="MQTT version", description="'5' (default; reports denied publishes) or '3.1.1'."
    )
    tls: TlsConfig | None = Field(None, title="TLS", description="TLS settings; null for plain TCP (loopback only).")
    username: str | None = Field(None, title="Username", description="Broker username; null for no login.")
    password_file: FilePath | None = Field(
        None, title="Password file", description="File holding the broker password (first line is used)."
    )
    password: SecretStr | None = Field(
        None,
        title="Password",
        description="Broker password: set FEDINSPECT__BROKER__PASSWORD or password_file rather than the YAML file.",
    )
    client_id: str | None = Field(
        None,
        title="Client id",
        description="MQTT client id; default 'fedinspect-{role}-{id}'. Must be stable for the persistent session.",
        min_length=1,
        max_length=128,
    )
    keepalive_s: int = Field(30, title="Keepalive", description="MQTT keepalive in seconds.", ge=5, le=3600)
    session_expiry_s: int = Field(
        7 * 24 * 3600,
        title="Session expiry",
        description="How long the broker keeps the session and queued QoS 1 messages while offline (MQTT 5).",
        ge=0,
    )
    reconnect_min_delay_s: int = Field(
        1, title="Reconnect min delay", description="First reconnect delay; doubles per failure.", ge=1, le=60
    )
    reconnect_max_delay_s: int = Field(
        30, title="Reconnect max delay", description="Upper bound of the reconnect delay.", ge=1, le=600
    )
    topic_prefix: str = Field(
        DEFAULT_TOPIC_PREFIX, title="Topic prefix", description="Prefix of every topic of the contract."
    )
    max_payload_bytes: int = Field(
        1024 * 1024,
        title="Max payload",
        description=(
            "Largest payload this process publishes; bigger ones are refused locally. Keep it below the broker's "
            "limit (EMQX default 1 MB, AWS IoT Core 128 KB, Mosquitto max_packet_size) minus the topic length."
        ),
        ge=4096,
        le=256 * 1024 * 1024,
    )
    chunk_size_bytes: int = Field(
        256 * 1024,
        title="Chunk size",
        description="Payload bytes per chunk of a model or update transfer (64 KiB - 1 MiB).",
        ge=MIN_CHUNK_BYTES,
        le=MAX_CHUNK_BYTES,
    )
    max_inflight: int = Field(
        20, title="Max in flight", description="QoS 1 messages awaiting PUBACK at once.", ge=1, le=65535
    )
    publish_timeout_s: float = Field(
        10.0, title="Publish timeout", description="How long to wait for a PUBACK before reporting.", gt=0
    )

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return validate_topic_prefix(value)

    @field_validator("password", mode="after")
    @classmethod
    def _resolve_password(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        password_file: Path | None = info.data.get("password_file")
        if value is None and password_file is not None:
            lines = password_file.read_text(encoding="utf-8").splitlines()
            if not lines or not lines[0]:
                raise ValueError(f"password_file {str(password_file)!r} is empty")
            value = SecretStr(lines[0])
        if value is None and info.data.get("username"):
            raise ValueError(
                "required when username is set: set FEDINSPECT__BROKER__PASSWORD in the environment or "
                "broker.password_file"
            )
        return value

    @model_validator(mode="after")
    def _limits(self) -> Self:
        if self.chunk_size_bytes + CHUNK_FRAME_RESERVE > self.max_payload_bytes:
            raise ValueError(
                f"chunk_size_bytes ({self.chunk_size_bytes}) plus {CHUNK_FRAME_RESERVE} bytes of chunk header "
                f"must fit in max_payload_bytes ({self.max_payload_bytes})"
            )
        if self.reconnect_min_delay_s > self.reconnect_max_delay_s:
            raise ValueError("reconnect_min_delay_s must not exceed reconnect_max_delay_s")
        if self.tls is None and self.password is not None and self.host not in ("127.0.0.1", "localhost", "::1"):
            # A password over plain TCP to another host crosses the plant network in clear text.
            raise ValueError(f"a password to {self.host!r} needs TLS: set broker.tls or use a loopback broker")
        return self


class HttpConfig(ContractModel):
    """The process's HTTP server (API, health, metrics)."""

    host: str = Field(
        "127.0.0.1", title="Bind address", description="Address to bind; 127.0.0.1 keeps it local.", min_length=1
    )
    port: int = Field(8080, title="Port", description="TCP port of the HTTP server.", ge=1, le=65535)
    trusted_hosts: list[Annotated[str, StringConstraints(min_length=1, max_length=253)]] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "[::1]"],
        title="Trusted host names",
        description="Host names and addresses requests may be addressed to (the Host header, without its port; "
        "IPv6 in brackets; '*.example.com' for a domain); any other request gets 400, which stops a web page "
        "from reaching this API through DNS rebinding. Bound beyond loopback, add the name operators use; '*' "
        "turns the check off.",
        min_length=1,
    )
    tokens_file: Path | None = Field(
        None,
        title="API tokens file",
        description="The API tokens and their roles (viewer, operator, admin), as digests; written by "
        "`fedinspect token add`, re-read when it changes. null = data_dir/api-tokens.json. Every API path but "
        "/healthz, /readyz and /metrics needs a token.",
    )
    tls_cert_file: FilePath | None = Field(
        None,
        title="HTTPS certificate",
        description="PEM certificate (chain) the server presents, e.g. one issued by the plant CA; with "
        "tls_key_file the API and the pages are served over HTTPS. Bound beyond loopback without it, the web "
        "pages refuse plain HTTP (the API still needs its tokens).",
    )
    tls_key_file: FilePath | None = Field(
        None, title="HTTPS key", description="PEM private key of tls_cert_file (readable by the service only)."
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("http.tls_cert_file and http.tls_key_file go together: set both or neither")
        return self

    @property
    def https(self) -> bool:
        return self.tls_cert_file is not None


class LoggingConfig(ContractModel):
    """Log output: one JSON object per line by default, for journald and log shippers."""

    level: LogLevel = Field(LogLevel.INFO, title="Level", description="Minimum level logged.")
    json_format: bool = Field(
        True, title="JSON", description="true: one JSON object per line; false: readable text for a terminal."
    )


class StrategyName(StrEnum):
    FEDAVG = "fedavg"
    FEDAVGM = "fedavgm"
    FEDPROX = "fedprox"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"
    FEDADAGRAD = "fedadagrad"
    FEDMEDIAN = "fedmedian"
    TRIMMED_MEAN = "trimmed_mean"
    KRUM = "krum"
    MULTIKRUM = "multikrum"


class StrategyConfig(ContractModel):
    """Which aggregation algorithm turns a round's updates into the next global model, and which tensors stay
    local."""

    strategy: StrategyName = Field(StrategyName.FEDAVG, title="Strategy", description="Aggregation algorithm.")
    params: dict[str, float | int] = Field(
        default_factory=dict,
        title="Strategy parameters",
        description=(
            "Keyword parameters of the strategy: fedavgm server_learning_rate, server_momentum; fedprox mu; "
            "fedadam/fedyogi/fedadagrad eta, beta_1, beta_2, tau; "
            "trimmed_mean trim_fraction; krum/multikrum byzantine, keep."
        ),
    )
    fedbn: bool = Field(
        False, title="FedBN", description="Keep BatchNorm statistics and parameters local (not aggregated)."
    )
    keep_local: list[str] = Field(
        default_factory=list,
        title="Local keys",
        description="Extra regular expressions of tensor names that are never aggregated.",
    )

    @field_validator("keep_local")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
        return patterns


class AggregationConfig(StrategyConfig):
    """How the hub turns a round's updates into the next global model (the strategy of every model line whose
    round plan names none of its own), and which updates it refuses or clips (for every line)."""

    clip_factor: float | None = Field(
        2.0,
        title="Clip factor",
        description=(
            "At aggregation, an update whose L2 norm exceeds the round's median norm times this is scaled down to "
            "that bound (kept, not refused); null = no clipping."
        ),
        ge=1.0,
    )
    max_relative_norm: float | None = Field(
        10.0,
        title="Max relative update norm",
        description="Refuse updates whose L2 norm exceeds this many times the base model's own norm; null = off.",
        gt=0,
    )
    max_update_norm: float | None = Field(
        None, title="Max update norm", description="Refuse updates whose L2 norm exceeds this; null = no bound.", gt=0
    )
    max_examples_per_update: int = Field(
        10_000,
        title="Max examples per update",
        description=(
            "An update's averaging weight is its num_examples, capped at this: an edge that claims more examples "
            "than it could have cannot take over the average."
        ),
        ge=1,
    )

    @model_validator(mode="before")
    @classmethod
    def _replaced_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "max_z_score" in data:
            raise ValueError(
                "max_z_score was removed: updates far above the round's median norm are now clipped to "
                "clip_factor x the median instead of refused; remove max_z_score (and set clip_factor if needed)"
            )
        return data


class RoundPlanConfig(ContractModel):
    """Rounds the hub runs for one model line, one after the other."""

    def training_for_round(self, number: int) -> TrainingConfig:
        """The training settings the ``number``-th round of this line (1 = the first) announces."""
        scale = max(self.learning_rate_decay ** max(0, number - 1), self.learning_rate_floor)
        if scale == 1.0:
            return self.training
        return self.training.model_copy(update={"learning_rate": self.training.learning_rate * scale})

    model_name: Identifier = Field(title="Model name", description="Model line to train (version 0 must exist).")
    min_updates: int = Field(2, title="k", description="Updates that close a round before its deadline.", ge=1)
    round_duration_s: float = Field(
        3600.0, title="Round duration", description="Seconds from opening to the deadline.", gt=0
    )
    max_rounds: int = Field(0, title="Max rounds", description="Stop after this many rounds; 0 = keep going.", ge=0)
    training: TrainingConfig = Field(
        default_factory=TrainingConfig, title="Training", description="Local training settings sent to edges."
    )
    learning_rate_decay: float = Field(
        1.0,
        title="Learning-rate decay",
        description="Each round of this plan announces the previous round's learning rate times this (the n-th "
        "round the hub opens for the line: training.learning_rate x decay^(n-1), failed rounds counted), so "
        "edges take smaller steps from a model that is converging; never below learning_rate_floor of the plan's "
        "rate. 1 = the same rate every round.",
        gt=0,
        le=1,
    )
    learning_rate_floor: float = Field(
        0.05,
        title="Learning-rate floor",
        description="The smallest fraction of training.learning_rate that learning_rate_decay brings a round to.",
        gt=0,
        le=1,
    )
    aggregation: StrategyConfig | None = Field(
        None,
        title="Aggregation of this line",
        description="This line's strategy, parameters and local tensors, when they differ from the hub's "
        "aggregation (e.g. FedAvgM for a classifier fine-tuned from a pretrained backbone, FedAvg for a detector "
        "trained from scratch); null = the hub's. The bounds on updates (clip_factor, norms, examples) are the "
        "hub's for every line.",
    )
    buffered: bool = Field(
        False,
        title="Buffered (FedBuff)",
        description=(
            "Keep updates on an older base or for a closed round for the open round, weighted by "
            "num_examples / (1 + staleness) ** staleness_exponent, instead of refusing them."
        ),
    )
    max_staleness: int = Field(
        2, title="Max staleness", description="Versions an update's base may lag in buffered mode.", ge=0
    )
    staleness_exponent: float = Field(
        0.5, title="Staleness exponent", description="How fast stale updates lose weight (FedBuff uses 0.5).", ge=0
    )


class CpuProviderConfig(ContractModel):
    """ONNX Runtime's CPU execution provider."""

    kind: Literal["cpu"] = Field(title="Provider", description="Always 'cpu'.")
    intra_op_threads: int = Field(
        0, title="Intra-op threads", description="Threads inside one operator; 0 lets ONNX Runtime choose.", ge=0
    )
    inter_op_threads: int = Field(
        0, title="Inter-op threads", description="Threads across independent operators; 0 = default.", ge=0
    )


class CudaProviderConfig(ContractModel):
    """ONNX Runtime's CUDA execution provider."""

    kind: Literal["cuda"] = Field(title="Provider", description="Always 'cuda'.")
    device_id: int = Field(0, title="GPU", description="CUDA device index.", ge=0)
    arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = Field(
        "kSameAsRequested",
        title="Arena growth",
        description="How the GPU memory arena grows; kSameAsRequested wastes less memory on a shared GPU.",
    )
    gpu_mem_limit_bytes: int | None = Field(
        None, title="GPU memory limit", description="Upper bound of the arena in bytes; null = no limit.", ge=1
    )
    cuda_graph: bool = Field(
        False,
        title="CUDA graphs",
        description="Capture the model as a CUDA graph (only used when the input shape is static).",
    )


class TensorRtProviderConfig(ContractModel):
    """ONNX Runtime's TensorRT execution provider (falls back per node to the next provider)."""

    kind: Literal["tensorrt"] = Field(title="Provider", description="Always 'tensorrt'.")
    device_id: int = Field(0, title="GPU", description="CUDA device index.", ge=0)
    fp16: bool = Field(True, title="fp16", description="Let TensorRT build fp16 kernels.")
    engine_cache_dir: Path | None = Field(
        None,
        title="Engine cache",
        description="Directory of built engines so a restart does not rebuild them; null = <data_dir>/trt-cache.",
    )
    max_workspace_bytes: int = Field(
        2 * 1024**3, title="Workspace", description="TensorRT builder workspace in bytes.", ge=1024**2
    )


ProviderConfig = Annotated[
    CpuProviderConfig | CudaProviderConfig | TensorRtProviderConfig,
    Field(discriminator="kind"),
]


class InferenceConfig(ContractModel):
    """How ONNX Runtime runs the models."""

    providers: list[ProviderConfig] = Field(
        default_factory=lambda: list[ProviderConfig]([CpuProviderConfig(kind="cpu")]),
        title="Execution providers",
        description=(
            "In preference order, e.g. [{kind: tensorrt}, {kind: cuda}, {kind: cpu}]. Providers this ONNX Runtime "
            "build lacks are skipped with a logged reason; the provider actually in use is reported."
        ),
        min_length=1,
    )
    watchdog_timeout_s: float = Field(
        5.0,
        title="Watchdog limit",
        description="An inference call running longer than this marks the engine unhealthy.",
        gt=0,
    )

    @field_validator("providers")
    @classmethod
    def _distinct(cls, providers: list[ProviderConfig]) -> list[ProviderConfig]:
        kinds = [provider.kind for provider in providers]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"each provider kind may appear once, got {kinds}")
        return providers


class DetectorMode(StrEnum):
    GATED = "gated"
    ALWAYS = "always"


class InspectionConfig(ContractModel):
    """Classify-then-detect: the gate and the detector's thresholds."""

    defect_threshold: float = Field(
        0.5,
        title="Defect threshold",
        description="An image is defective when the classifier's defect probability is at least this.",
        ge=0,
        le=1,
    )
    detector_mode: DetectorMode = Field(
        DetectorMode.GATED,
        title="Detector mode",
        description="gated: run the detector only on images the classifier calls defective; always: on every image.",
    )
    defect_class: str = Field(
        "defective",
        title="Defect class",
        description="Name of the classifier class that means defective (the other classes mean good).",
        min_length=1,
    )
    confidence_threshold: float = Field(
        0.25, title="Box confidence", description="Detections scoring below this are dropped.", ge=0, le=1
    )
    iou_threshold: float = Field(
        0.7, title="NMS IoU", description="Boxes of one class overlapping more than this are merged.", gt=0, le=1
    )
    max_detections: int = Field(300, title="Max boxes", description="Boxes kept per image.", ge=1, le=10000)
    templates_dir: Path | None = Field(
        None,
        title="Golden templates",
        description="Folder of defect-free template images, one per board type, named '<template id>.<ext>' "
        "(png, jpg, bmp, tif). Needed when a model compares each image with its template (input template "
        "'composite'); images must be aligned to their template and the same size.",
    )
    default_template: Identifier | None = Field(
        None,
        title="Default template",
        description="Template id used for an image that names none (a line that builds one board type).",
    )

    @model_validator(mode="after")
    def _default_template_needs_folder(self) -> Self:
        if self.default_template is not None and self.templates_dir is None:
            raise ValueError(
                f"default_template {self.default_template!r} needs templates_dir (the folder it is read from)"
            )
        return self


class ReviewConfig(ContractModel):
    """Which results go to a person: every defective one (alert) and doubtful ones (uncertain)."""

    alert_defective: bool = Field(
        True, title="Alert on defects", description="Queue every defective result for confirmation (severity alert)."
    )
    uncertain_low: float = Field(
        0.35,
        title="Uncertain from",
        description="Defect scores from this value up to uncertain_high count as uncertain (severity uncertain).",
        ge=0,
        le=1,
    )
    uncertain_high: float = Field(
        0.65, title="Uncertain below", description="Upper end (exclusive) of the uncertain band.", ge=0, le=1
    )

    @model_validator(mode="after")
    def _band(self) -> Self:
        if self.uncertain_low > self.uncertain_high:
            raise ValueError(
                f"uncertain_low ({self.uncertain_low}) must not exceed uncertain_high ({self.uncertain_high})"
            )
        return self


class IntakeConfig(ContractModel):
    """Limits on incoming images, so a burst or a hostile input cannot take the edge down."""

    max_image_bytes: int = Field(
        32 * 1024**2, title="Max image size", description="Encoded images above this are refused (413).", ge=1024
    )
    max_pending: int = Field(
        8,
        title="Max pending",
        description="Images being inspected or imported at once; beyond this HTTP answers 503 with Retry-After "
        "(a label import waits for a free slot).",
        ge=1,
        le=1024,
    )
    max_import_bytes: int = Field(
        512 * 1024**2,
        title="Max import size",
        description="A label import's whole request body (every image and label file) above this is refused (413) "
        "while it arrives, before it is spooled; each image within it is still held to max_image_bytes.",
        ge=1024**2,
    )
    max_decoded_bytes: int = Field(
        256 * 1024**2,
        title="Max decoded size",
        description="Images whose header claims more bytes decoded (width x height x channels x bytes per channel) "
        "are refused before decoding (422); with max_pending it bounds the memory intake can take.",
        ge=1024**2,
    )


class EdgeModelsConfig(ContractModel):
    """The ONNX files the edge serves (model bundles' model.onnx, or any self-describing ONNX file), and how new
    global versions from the hub are taken."""

    classifier: Path | None = Field(
        None, title="Classifier", description="The good / defective classifier; required by `fedinspect edge run`."
    )
    detector: Path | None = Field(
        None, title="Detector", description="The defect detector; without it results carry no boxes."
    )
    hub_keys_dir: Path | None = Field(
        None,
        title="Hub keys",
        description="Directory with the hub's public key ({hub_id}.pub); set it to take signed global models.",
    )
    hub_id: Identifier = Field("hub", title="Hub id", description="Key id that must have signed global models.")
    regression_tolerance: float = Field(
        0.02,
        title="Regression tolerance",
        description="A new global model scoring more than this below the current one on the local holdout is not used.",
        ge=0,
        le=1,
    )
    local_batchnorm: bool = Field(
        True,
        title="Local BatchNorm statistics",
        description=(
            "Before a new global classifier is checked and served, recompute its BatchNorm running statistics on "
            "this plant's recent images (no labels needed; the learned weights stay the hub's). Averaged over plants "
            "that differ in lighting or board design, those statistics fit none of them. Needs the train extra "
            "(PyTorch); without it, or with too few images, the global model is served as published."
        ),
    )
    local_batchnorm_images: int = Field(
        256,
        title="Local BatchNorm images",
        description="At most this many of the newest images outside the local holdout compute those statistics.",
        ge=2,
        le=100_000,
    )
    max_model_bytes: int = Field(
        2 * 1024**3,
        title="Max model bundle",
        description="Largest model bundle the edge assembles from chunks; a bigger declared size is refused.",
        ge=1024,
    )
    max_partial_transfers: int = Field(
        4,
        title="Max partial model transfers",
        description=(
            "Model transfers the edge assembles at once; chunks of a further one are refused (over_quota) until "
            "one finishes or expires. Bounds files, memory and disk before any signature is checked."
        ),
        ge=1,
        le=1024,
    )
    max_partial_bytes: int = Field(
        4 * 1024**3,
        title="Max partial model bytes",
        description="Sum of the declared sizes of the model transfers being assembled at once (disk they may fill).",
        ge=1024,
    )
    max_tensor_header_bytes: int = Field(
        1024**2,
        title="Max tensor header",
        description=(
            "Largest safetensors JSON header of a model's weights; a bundle over it, or with non-numeric tensors, "
            "is not installed."
        ),
        ge=1024,
        le=100 * 1024**2,
    )

    @model_validator(mode="after")
    def _partial_bytes_fit_a_model(self) -> Self:
        if self.max_partial_bytes < self.max_model_bytes:
            raise ValueError(
                f"max_partial_bytes ({self.max_partial_bytes}) must be at least max_model_bytes "
                f"({self.max_model_bytes}), or the largest model could never arrive"
            )
        return self


class FolderSourceConfig(ContractModel):
    """A folder the camera software writes images into; each new file is inspected once."""

    path: Path = Field(title="Folder", description="Directory to watch (not recursive).")
    poll_interval_s: float = Field(1.0, title="Poll interval", description="How often the folder is listed.", gt=0)
    settle_s: float = Field(
        0.5,
        title="Settle time",
        description="A file is taken only once it has not changed for this long (it may still be being written).",
        ge=0,
    )
    extensions: list[str] = Field(
        default_factory=lambda: [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"],
        title="Extensions",
        description="File name endings that are images (case-insensitive); other files are ignored.",
        min_length=1,
    )
    template: Identifier | None = Field(
        None,
        title="Template",
        description="Template id of the boards imaged into this folder (else inspection.default_template).",
    )


class SourcesConfig(ContractModel):
    """Where images come from besides HTTP POST /v1/inspect."""

    folder: FolderSourceConfig | None = Field(None, title="Watched folder", description="A folder to watch.")
    mqtt_images: bool = Field(
        False,
        title="MQTT images",
        description="Inspect raw image bytes published on edge/{edge_id}/images (QoS 1; the broker ACL must let "
        "the camera client write there).",
    )


class BufferConfig(ContractModel):
    """The edge buffer's disk quota for images (rows are small and always kept)."""

    max_image_bytes: int = Field(
        20 * 1024**3,
        title="Image quota",
        description=(
            "Images beyond this many bytes are evicted, oldest unlabeled and already reported first, then labeled "
            "ones already used in training; never a sample waiting for review or a label not yet trained on."
        ),
        ge=1024**2,
    )
    quota_check_interval_s: float = Field(
        60.0, title="Quota check interval", description="How often the quota is enforced.", gt=0
    )
    refuse_above_bytes: int | None = Field(
        None,
        title="Hard image cap",
        description="Images beyond this many bytes are not stored at all: intake answers 507 and imports refuse "
        "the file, until review, training or eviction makes room (what the quota may never evict can still grow). "
        "Default: 1.25 x max_image_bytes.",
        ge=1024**2,
    )
    min_free_disk_bytes: int = Field(
        1024**3,
        title="Free disk floor",
        description="Nothing is stored that would leave less than this free on the images' filesystem (507).",
        ge=0,
    )

    @property
    def hard_limit_bytes(self) -> int:
        return self.refuse_above_bytes if self.refuse_above_bytes is not None else self.max_image_bytes * 5 // 4

    @model_validator(mode="after")
    def _hard_above_quota(self) -> Self:
        if self.hard_limit_bytes < self.max_image_bytes:
            raise ValueError(
                f"refuse_above_bytes ({self.hard_limit_bytes}) must be at least max_image_bytes "
                f"({self.max_image_bytes})"
            )
        return self


class AugmentationConfig(ContractModel):
    """Random changes applied to training images (boxes move with them); each flag on its own."""

    horizontal_flip: bool = Field(True, title="Horizontal flip", description="Mirror left-right at random.")
    vertical_flip: bool = Field(True, title="Vertical flip", description="Mirror top-bottom at random.")
    rotate90: bool = Field(
        True, title="90-degree rotations", description="Rotate by 0, 90, 180 or 270 degrees at random."
    )
    brightness: float = Field(
        0.2,
        title="Brightness",
        description="Scale pixel values by a random factor in [1 - b, 1 + b] (lighting changes; a template-crops "
        "detector's crops: image, template and their difference together); 0 disables it.",
        ge=0,
        le=0.9,
    )
    mosaic: float = Field(
        0.5,
        title="Mosaic",
        description="Detector only: probability of Ultralytics' 4-image mosaic per training image.",
        ge=0,
        le=1,
    )


class LocalTrainingConfig(ContractModel):
    """When and how the edge fine-tunes the global models on its own labels (in a separate low-priority process)."""

    enabled: bool = Field(True, title="Enabled", description="false: never train here (inspection only).")
    signing_key_file: Path | None = Field(
        None,
        title="Update signing key",
        description="Ed25519 private key ({edge_id}.key from enrollment) that signs updates; without it no training.",
    )
    on_round: bool = Field(
        True, title="Train on rounds", description="Train when the hub announces a round this edge has not answered."
    )
    schedule_interval_s: float | None = Field(
        None,
        title="Schedule interval",
        description="Also try to train this often (for the open round), gated by new labels and idleness.",
        gt=0,
    )
    schedule_cron: str | None = Field(
        None,
        title="Schedule (cron)",
        description="Cron expression (UTC), e.g. '0 2 * * *', instead of or besides the interval; gated the same.",
    )
    min_new_labels: int = Field(
        20, title="New labels", description="Scheduled training needs this many labels not yet trained on.", ge=1
    )
    min_examples: int = Field(
        8, title="Minimum examples", description="Never train on fewer labeled training samples than this.", ge=1
    )
    idle_window_s: float = Field(
        60.0, title="Idle window", description="Scheduled training waits for this long a quiet period.", gt=0
    )
    idle_max_images_per_s: float = Field(
        1.0,
        title="Idle threshold",
        description="The line counts as idle while fewer images per second than this were inspected in the window.",
        ge=0,
    )
    max_duration_s: float = Field(
        1800.0,
        title="Time limit",
        description="A training run is stopped after this long (and never runs past the round's deadline).",
        gt=0,
    )
    nice: int = Field(
        10,
        title="Niceness",
        description="Unix nice value of the training process (higher = lower priority).",
        ge=0,
        le=19,
    )
    threads: int = Field(
        1,
        title="Threads",
        description="CPU threads the training process may use (leave cores for inspection).",
        ge=1,
        le=256,
    )
    device: Literal["cpu", "cuda"] = Field(
        "cpu", title="Device", description="Where training runs: cpu, or cuda (the first GPU) on GPU boxes."
    )
    class_balancing: bool = Field(
        True,
        title="Class balancing",
        description="Weight the classifier's loss by inverse class frequency so a rare defect class still counts.",
    )
    labeled_kinds_only: bool = Field(
        True,
        title="Labeled kinds only",
        description="Template-crops detector: a defect kind none of this plant's training boxes has is left out of "
        "the loss's softmax, so a plant that never sees a kind does not teach the shared model to call it "
        "background (restricted softmax). false: every kind is trained, an unseen one as background.",
    )
    augmentation: AugmentationConfig = Field(
        default_factory=AugmentationConfig, title="Augmentation", description="Random training-image changes."
    )
    encoding: TensorEncoding = Field(
        default_factory=lambda: TensorEncoding(dtype=TensorDtype.FP16, compression=Compression.ZSTD),
        title="Update encoding",
        description="How the delta travels to the hub (fp32 / fp16 / int8 with per_channel scales, zstd).",
    )

    @field_validator("schedule_cron")
    @classmethod
    def _cron_parses(cls, value: str | None) -> str | None:
        if value is not None:
            from croniter import croniter

            if not croniter.is_valid(value):
                raise ValueError(f"{value!r} is not a cron expression (minute hour day month weekday)")
        return value


class EdgeConfig(ContractModel):
    """edge.yaml: configuration of one edge agent."""

    edge_id: Identifier = Field(title="Edge id", description="Unique id of this edge; its topic level and key id.")
    broker: BrokerConfig = Field(default_factory=BrokerConfig, title="Broker", description="MQTT broker link.")
    data_dir: Path = Field(
        Path("/var/lib/fedinspect/edge"),
        title="Data directory",
        description="Buffer database, images, model bundles and transfer state live here.",
    )
    http: HttpConfig = Field(default_factory=HttpConfig, title="HTTP", description="HTTP API, health and metrics.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, title="Logging", description="Log output.")
    inference: InferenceConfig = Field(
        default_factory=InferenceConfig, title="Inference", description="ONNX Runtime execution providers."
    )
    inspection: InspectionConfig = Field(
        default_factory=InspectionConfig, title="Inspection", description="Classifier gate and detector thresholds."
    )
    review: ReviewConfig = Field(
        default_factory=ReviewConfig, title="Review", description="Which results go to the review queue."
    )
    intake: IntakeConfig = Field(default_factory=IntakeConfig, title="Intake", description="Limits on incoming images.")
    models: EdgeModelsConfig = Field(
        default_factory=EdgeModelsConfig, title="Models", description="The ONNX models to serve."
    )
    sources: SourcesConfig = Field(
        default_factory=SourcesConfig, title="Sources", description="Image sources besides HTTP."
    )
    buffer: BufferConfig = Field(
        default_factory=BufferConfig, title="Buffer", description="Disk quota of the image buffer."
    )
    status_interval_s: float = Field(
        30.0,
        title="Status interval",
        description="How often the retained status on edge/{id}/status is refreshed.",
        gt=0,
    )
    training: LocalTrainingConfig = Field(
        default_factory=LocalTrainingConfig, title="Training", description="Local fine-tuning on this edge's labels."
    )

    @model_validator(mode="after")
    def _folder_template_needs_folder(self) -> Self:
        folder = self.sources.folder
        if folder is not None and folder.template is not None and self.inspection.templates_dir is None:
            raise ValueError(
                f"sources.folder.template {folder.template!r} needs inspection.templates_dir (where it is read from)"
            )
        return self


class UpdateIntakeConfig(ContractModel):
    """Bounds on what edges' update uploads may make the hub hold before their signatures are checked."""

    max_update_bytes: int = Field(
        1024**3,
        title="Max update",
        description="Largest update artifact the hub assembles from chunks; a bigger declared size is refused.",
        ge=1024,
    )
    max_partial_updates_per_edge: int = Field(
        4,
        title="Max partial updates per edge",
        description=(
            "Update transfers one edge may have in progress at once; chunks of a further one are refused "
            "(over_quota, logged) until one finishes or expires."
        ),
        ge=1,
        le=1024,
    )
    max_partial_bytes_per_edge: int = Field(
        2 * 1024**3,
        title="Max partial bytes per edge",
        description="Sum of the declared sizes of one edge's update transfers in progress (disk they may fill).",
        ge=1024,
    )
    max_tensor_header_bytes: int = Field(
        1024**2,
        title="Max tensor header",
        description="Largest safetensors JSON header of a delta; its length is read and checked before parsing.",
        ge=1024,
        le=100 * 1024**2,
    )
    decode_margin_bytes: int = Field(
        64 * 1024,
        title="Decode margin",
        description="Bytes a delta may decode to beyond its base model's size (an honest one decodes to exactly it).",
        ge=0,
    )

    @model_validator(mode="after")
    def _partial_bytes_fit_an_update(self) -> Self:
        if self.max_partial_bytes_per_edge < self.max_update_bytes:
            raise ValueError(
                f"max_partial_bytes_per_edge ({self.max_partial_bytes_per_edge}) must be at least max_update_bytes "
                f"({self.max_update_bytes}), or the largest update could never arrive"
            )
        return self


class HubConfig(ContractModel):
    """hub.yaml: configuration of the hub."""

    hub_id: Identifier = Field("hub", title="Hub id", description="Id of the hub; its sender id and key id.")
    broker: BrokerConfig = Field(default_factory=BrokerConfig, title="Broker", description="MQTT broker link.")
    data_dir: Path = Field(
        Path("/var/lib/fedinspect/hub"),
        title="Data directory",
        description="Registry artifacts, keys and transfer state live here.",
    )
    database_url: str | None = Field(
        None,
        title="Database URL",
        description="SQLAlchemy URL of the registry, e.g. postgresql+psycopg://...; null = SQLite in data_dir.",
    )
    http: HttpConfig = Field(
        default_factory=lambda: HttpConfig(port=8090), title="HTTP", description="HTTP API, health and metrics."
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig, title="Logging", description="Log output.")
    aggregation: AggregationConfig = Field(
        default_factory=AggregationConfig, title="Aggregation", description="Strategy and update validation."
    )
    rounds: list[RoundPlanConfig] = Field(
        default_factory=list, title="Rounds", description="Model lines to run federated rounds for."
    )
    update_intake: UpdateIntakeConfig = Field(
        default_factory=UpdateIntakeConfig,
        title="Update intake",
        description="Bounds on update uploads from edges: sizes, transfers in progress per edge, decoding.",
    )
    signing_key_file: Path | None = Field(
        None,
        title="Signing key",
        description="Ed25519 private key that signs global models; default data_dir/keys/{hub_id}.key.",
    )
    enrolled_keys_dir: Path | None = Field(
        None,
        title="Enrolled edge keys",
        description="Directory of {edge_id}.pub files of edges allowed to send updates; default data_dir/keys/edges.",
    )
    tick_interval_s: float = Field(
        1.0, title="Tick interval", description="How often deadlines and housekeeping run.", gt=0, le=60
    )
    export_timeout_s: float = Field(
        900,
        title="Export timeout",
        description="Longest an ONNX export of a new global version may take (it runs in a child process).",
        gt=0,
    )


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def _env_overrides(env: Mapping[str, str]) -> dict[tuple[str, ...], tuple[str, Any]]:
    overrides: dict[tuple[str, ...], tuple[str, Any]] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or len(name) == len(ENV_PREFIX):
            continue
        path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split(ENV_SEPARATOR))
        if any(not part for part in path):
            raise ConfigError([f"{name} (environment): empty key level in the variable name"])
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        if path[-1] in _SECRET_KEYS or isinstance(value, dict | list):
            value = raw  # secrets and structured values are taken verbatim, never YAML-interpreted
        overrides[path] = (name, value)
    return overrides


def _apply(data: dict[str, Any], path: tuple[str, ...], value: Any, origin: str) -> None:
    node = data
    for level in path[:-1]:
        child = node.setdefault(level, {})
        if not isinstance(child, dict):
            raise ConfigError([f"{origin}: {'.'.join(path)}: {level!r} is not a mapping in the config file"])
        node = child
    node[path[-1]] = value


def _describe_input(loc: tuple[str | int, ...], value: Any) -> str:
    # A mapping is the parent section (missing keys, cross-field checks): the key path already says where.
    if isinstance(value, dict) or any(str(part) in _SECRET_KEYS for part in loc):
        return ""
    text = repr(value)
    return f" (got {text if len(text) <= 80 else text[:77] + '...'})"


def validate_config(
    data: Mapping[str, Any],
    model: type[ConfigT],
    *,
    source: str,
    env: Mapping[str, str] | None = None,
) -> ConfigT:
    """Validate a config mapping after environment overrides; errors name ``source`` or the variable and key."""
    merged: dict[str, Any] = dict(data)
    origins: dict[tuple[str, ...], str] = {}
    for path, (name, value) in _env_overrides(os.environ if env is None else env).items():
        _apply(merged, path, value, f"{name} (environment)")
        origins[path] = f"{name} (environment)"
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(str(part) for part in error["loc"])
            origin = next((o for p, o in origins.items() if loc[: len(p)] == p), source)
            key = ".".join(loc) or "(top level)"
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key (check the spelling; see the JSON Schema from `fedinspect schemas export`)"
            elif error["type"] == "missing":
                message = "required key is missing"
            problems.append(f"{origin}: {key}: {message}{_describe_input(loc, error.get('input'))}")
        raise ConfigError(problems) from None


def load_config(path: str | Path, model: type[ConfigT], *, env: Mapping[str, str] | None = None) -> ConfigT:
    """Read a YAML config file, apply ``FEDINSPECT__`` environment overrides and validate it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError([f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of keys, got {type(data).__name__}"])
    return validate_config(data, model, source=str(path), env=env)
