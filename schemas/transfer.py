"""Chunk frames: how one artifact file travels over MQTT as self-describing chunks (the wire format).

Frame layout (one MQTT payload)::

    b"FIT1" | u16 big-endian header length | header JSON (ChunkHeader) | chunk bytes

Every frame names its transfer, its index, the chunk count and size, the size and SHA-256 of the whole artifact
and the CRC-32 of its own bytes, so the protocol needs nothing of the broker but QoS 1 delivery of payloads of
``chunk_size + 1 KiB`` (it runs on MQTT 3.1.1 and 5, on Mosquitto, EMQX and AWS IoT Core). Cutting a file into
frames and assembling them again is runtime work: ``runtime.assembler``.
"""

from __future__ import annotations

import math
import zlib
from typing import Self

from pydantic import Field, ValidationError, model_validator

from schemas.base import ContractModel, Identifier, Sha256Hex
from schemas.config import CHUNK_FRAME_RESERVE
from schemas.errors import RejectedError, RejectReason

MAGIC = b"FIT1"
_PREFIX_LEN = len(MAGIC) + 2


class ChunkHeader(ContractModel):
    """The self-describing header of one chunk frame."""

    transfer_id: Identifier = Field(title="Transfer", description="Id shared by every chunk of the artifact.")
    index: int = Field(title="Index", description="0-based position of this chunk.", ge=0)
    count: int = Field(title="Count", description="Number of chunks of the artifact.", ge=1)
    chunk_size: int = Field(title="Chunk size", description="Bytes in every chunk but the last.", ge=1)
    total_size: int = Field(title="Total size", description="Bytes of the whole artifact.", ge=0)
    sha256: Sha256Hex = Field(title="Artifact SHA-256", description="SHA-256 of the whole artifact.")
    chunk_crc32: int = Field(
        title="Chunk CRC-32",
        description=(
            "CRC-32 (zlib) of this chunk's bytes: catches corruption per chunk so only that chunk is fetched again. "
            "Tampering is caught by the whole artifact's SHA-256 and the signed manifest inside it."
        ),
        ge=0,
        lt=2**32,
    )

    @model_validator(mode="after")
    def _geometry(self) -> Self:
        if self.count != max(1, math.ceil(self.total_size / self.chunk_size)):
            raise ValueError(f"count {self.count} does not fit total_size {self.total_size} / chunk {self.chunk_size}")
        if self.index >= self.count:
            raise ValueError(f"index {self.index} is not below count {self.count}")
        return self

    def artifact_identity(self) -> tuple[int, int, int, str]:
        """What every chunk of one transfer must agree on."""
        return (self.count, self.chunk_size, self.total_size, self.sha256)

    def expected_length(self) -> int:
        if self.index < self.count - 1:
            return self.chunk_size
        return self.total_size - self.chunk_size * (self.count - 1)


def encode_chunk(header: ChunkHeader, data: bytes) -> bytes:
    header_bytes = header.model_dump_json().encode("utf-8")
    if len(header_bytes) + _PREFIX_LEN > CHUNK_FRAME_RESERVE:
        raise ValueError(f"chunk header of {len(header_bytes)} bytes exceeds the reserve of {CHUNK_FRAME_RESERVE}")
    return MAGIC + len(header_bytes).to_bytes(2, "big") + header_bytes + data


def decode_chunk(payload: bytes) -> tuple[ChunkHeader, bytes]:
    """Parse and check one frame: RejectedError(MALFORMED) for a bad frame, (CHUNK_CORRUPT) for bad bytes."""
    if len(payload) < _PREFIX_LEN or payload[: len(MAGIC)] != MAGIC:
        raise RejectedError(RejectReason.MALFORMED, "payload is not a fedinspect chunk frame")
    header_len = int.from_bytes(payload[len(MAGIC) : _PREFIX_LEN], "big")
    if _PREFIX_LEN + header_len > len(payload):
        raise RejectedError(RejectReason.MALFORMED, "chunk header length exceeds the payload")
    try:
        header = ChunkHeader.model_validate_json(payload[_PREFIX_LEN : _PREFIX_LEN + header_len])
    except ValidationError as exc:
        raise RejectedError(RejectReason.MALFORMED, f"invalid chunk header: {exc.errors()[0]['msg']}") from None
    data = payload[_PREFIX_LEN + header_len :]
    if len(data) != header.expected_length():
        raise RejectedError(
            RejectReason.MALFORMED,
            f"chunk {header.index} of {header.transfer_id} has {len(data)} bytes, expected {header.expected_length()}",
        )
    if zlib.crc32(data) != header.chunk_crc32:
        raise RejectedError(
            RejectReason.CHUNK_CORRUPT, f"chunk {header.index} of {header.transfer_id} does not match its CRC-32"
        )
    return header, data
