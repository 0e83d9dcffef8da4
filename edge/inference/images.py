"""Image decoding and the preprocessing an ONNX model's input spec asks for (OpenCV, no torch).

Images are numpy arrays as OpenCV decodes them: (H, W) grayscale or (H, W, 3) BGR, uint8. The letterbox matches
Ultralytics' (same rounding of the resized size and of the padding) so a detector exported from Ultralytics sees
the same tensor here as in Ultralytics' own predict.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from edge.inference.errors import ImageError
from schemas.manifests import ColorMode, InputSpec, ResizeMode

MAX_IMAGE_PIXELS = 1 << 27
"""Decoded images above 134 M pixels are refused before decoding (a header may claim anything)."""
MAX_DECODED_BYTES = 256 * 1024**2
"""Default cap on the bytes an image may decode to (``intake.max_decoded_bytes``): width x height x channels x
bytes per channel, read from the header before anything is decoded. A 1 MB PNG can claim 16-bit RGBA at the
pixel cap, 1 GiB decoded and more in conversions."""
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
"""PNG colour type -> channels OpenCV decodes (a palette image decodes to indices, then to BGR: counted as 3)."""
# OpenCV reads this once, at its first decode: headers claiming more pixels fail instead of allocating.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))


@dataclass(frozen=True)
class Geometry:
    """How an original image maps onto the model input, to map boxes back."""

    original_height: int
    original_width: int
    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int


def claimed_size(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, channels, bytes per channel) that an encoded image's header claims, without decoding it.

    PNG is read from its IHDR chunk (exact bit depth); other formats from Pillow's header parse (``Image.open``
    reads no pixel data), 16-bit modes counted as 2 bytes a channel. Unknown: ``ImageError``.
    """
    if data[:8] == _PNG_SIGNATURE and len(data) >= 26 and data[12:16] == b"IHDR":
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        depth, colour = data[24], data[25]
        channels = 3 if colour == 3 else _PNG_CHANNELS.get(colour, 4)
        return width, height, channels, 2 if depth == 16 else 1
    import io

    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # the caller compares the claim with its own limits
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
            bands = len(header.getbands())
            wide = any(token in header.mode for token in ("16", "32", "F")) or header.mode == "I"
    except (UnidentifiedImageError, OSError, ValueError, ImportError):
        # ImportError: Ultralytics, once imported, patches Image.open to try a HEIF plugin it may not have
        raise ImageError(
            f"not a decodable image ({len(data)} bytes; no PNG, JPEG, BMP or TIFF header could be read)"
        ) from None
    return width, height, max(bands, 1), 2 if wide else 1


def decode_image(data: bytes, *, source: str = "image", max_decoded_bytes: int = MAX_DECODED_BYTES) -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, BMP, TIFF...) to grayscale or BGR uint8; ``ImageError`` if bad.

    What the header claims is checked against ``max_decoded_bytes`` (and the pixel cap) before decoding."""
    import cv2

    if not data:
        raise ImageError(f"{source}: empty image (0 bytes)")
    try:
        width, height, channels, depth = claimed_size(data)
    except ImageError as exc:
        raise ImageError(f"{source}: {exc}") from None
    claimed = width * height * channels * depth
    if width * height > MAX_IMAGE_PIXELS or claimed > max_decoded_bytes:
        raise ImageError(
            f"{source}: the header claims {width}x{height} pixels x {channels} channels x {depth} byte(s) = "
            f"{claimed} bytes decoded, over the limit of {max_decoded_bytes} (intake.max_decoded_bytes) or "
            f"{MAX_IMAGE_PIXELS} pixels"
        )
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        if "CV_IO_MAX_IMAGE_PIXELS" in str(exc):
            raise ImageError(f"{source}: the image header claims more than {MAX_IMAGE_PIXELS} pixels") from None
        raise ImageError(f"{source}: cannot decode image: {str(exc).strip().splitlines()[-1]}") from None
    if image is None or image.size == 0:
        raise ImageError(f"{source}: not a decodable image ({len(data)} bytes; PNG, JPEG, BMP or TIFF expected)")
    return normalize_image(image, source=source)


def normalize_image(image: np.ndarray, *, source: str = "image") -> np.ndarray:
    """Bring a decoded array to uint8 grayscale (H, W) or BGR (H, W, 3); refuse what cannot be inspected."""
    import cv2

    if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"{source}: expected an (H, W) or (H, W, C) image, got shape {image.shape}")
    if image.shape[0] * image.shape[1] > MAX_IMAGE_PIXELS:
        raise ImageError(f"{source}: {image.shape[1]}x{image.shape[0]} pixels is over the {MAX_IMAGE_PIXELS} limit")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"{source}: pixel type {image.dtype} is not supported (8- or 16-bit expected)")
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 1:
            image = image[:, :, 0]
        elif channels == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        elif channels != 3:
            raise ImageError(f"{source}: {channels} channels; 1, 3 or 4 expected")
    return image


def check_template_size(image: np.ndarray, template: np.ndarray, *, source: str = "image") -> None:
    """``ImageError`` unless ``template`` has the size of ``image`` (it must be aligned to it)."""
    if image.shape[:2] != template.shape[:2]:
        raise ImageError(
            f"{source} {image.shape[1]}x{image.shape[0]} and its template "
            f"{template.shape[1]}x{template.shape[0]} differ in size; a template must be aligned to its image"
        )


def reference_composite(image: np.ndarray, template: np.ndarray, *, source: str = "image") -> np.ndarray:
    """Golden-template comparison input: one 3-channel image of the inspected image, its defect-free template and
    their signed difference (B = image, G = template, R = 128 + (image - template) / 2), as a BGR array.

    A defect is a local difference from the template, so a detector that sees both learns far faster than one that
    sees the image alone (DeepPCB, YOLOv8n from scratch, 320 px, 10 epochs: mAP50 0.40 vs 0.20). Extra copper
    reads bright in R, missing copper dark. Both inputs grayscale (or BGR, converted), aligned, the same size.
    """
    import cv2

    check_template_size(image, template, source=source)
    gray = [item if item.ndim == 2 else cv2.cvtColor(item, cv2.COLOR_BGR2GRAY) for item in (image, template)]
    difference = (gray[0].astype(np.int16) - gray[1].astype(np.int16)) // 2 + 128
    return np.dstack([gray[0], gray[1], np.clip(difference, 0, 255).astype(np.uint8)])


def convert_color(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Grayscale or BGR in, the channel order the model wants out (always (H, W, C))."""
    import cv2

    converted: np.ndarray
    if spec.color == ColorMode.GRAY:
        converted = (image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))[:, :, None]
    elif image.ndim == 2:
        converted = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB if spec.color == ColorMode.RGB else cv2.COLOR_GRAY2BGR)
    else:
        converted = cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if spec.color == ColorMode.RGB else image
    return converted


def letterbox(image: np.ndarray, width: int, height: int, pad_value: int) -> tuple[np.ndarray, Geometry]:
    """Resize keeping the aspect ratio and pad to width x height, centred (Ultralytics' rounding)."""
    import cv2

    original_height, original_width = image.shape[:2]
    ratio = min(height / original_height, width / original_width)
    new_width = max(round(original_width * ratio), 1)
    new_height = max(round(original_height * ratio), 1)
    if (new_width, new_height) != (original_width, original_height):
        image = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
    pad_w, pad_h = (width - new_width) / 2, (height - new_height) / 2
    top, bottom = round(pad_h - 0.1), round(pad_h + 0.1)
    left, right = round(pad_w - 0.1), round(pad_w + 0.1)
    if image.ndim == 2:
        image = image[:, :, None]
    if top or bottom or left or right:
        padded = np.full((height, width, image.shape[2]), pad_value, dtype=image.dtype)
        padded[top : top + new_height, left : left + new_width] = image
        image = padded
    geometry = Geometry(
        original_height=original_height,
        original_width=original_width,
        scale_x=new_width / original_width,
        scale_y=new_height / original_height,
        pad_x=left,
        pad_y=top,
    )
    return image, geometry


def stretch(image: np.ndarray, width: int, height: int) -> tuple[np.ndarray, Geometry]:
    """Resize to exactly width x height (the aspect ratio may change)."""
    import cv2

    original_height, original_width = image.shape[:2]
    if (original_width, original_height) != (width, height):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if image.ndim == 2:
        image = image[:, :, None]
    return image, Geometry(original_height, original_width, width / original_width, height / original_height, 0, 0)


def to_tensor(
    images: list[np.ndarray], spec: InputSpec, dtype: np.dtype[np.floating]
) -> tuple[np.ndarray, list[Geometry]]:
    """Preprocess a batch of decoded images into one input tensor as ``spec`` says."""
    planes = []
    geometries = []
    for image in images:
        converted = convert_color(image, spec)
        if spec.resize == ResizeMode.LETTERBOX:
            sized, geometry = letterbox(converted, spec.width, spec.height, spec.pad_value)
        else:
            sized, geometry = stretch(converted, spec.width, spec.height)
        planes.append(sized)
        geometries.append(geometry)
    batch = np.stack(planes).astype(np.float32)
    batch *= np.float32(spec.scale)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    if np.any(mean != 0.0):
        batch -= mean
    if np.any(std != 1.0):
        batch /= std
    if spec.layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch, dtype=dtype), geometries


def boxes_to_original(boxes: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Map (N, 4) x1 y1 x2 y2 boxes from model-input pixels back to original pixels, clipped to the image."""
    mapped = boxes.astype(np.float32, copy=True)
    mapped[:, [0, 2]] = (mapped[:, [0, 2]] - geometry.pad_x) / geometry.scale_x
    mapped[:, [1, 3]] = (mapped[:, [1, 3]] - geometry.pad_y) / geometry.scale_y
    mapped[:, [0, 2]] = np.clip(mapped[:, [0, 2]], 0, geometry.original_width)
    mapped[:, [1, 3]] = np.clip(mapped[:, [1, 3]], 0, geometry.original_height)
    return mapped
