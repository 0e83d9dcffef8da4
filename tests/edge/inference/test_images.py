"""Decoding and preprocessing: clear errors for bad images, Ultralytics-identical letterbox, boxes mapped back."""

from __future__ import annotations

import numpy as np
import pytest

from edge.inference.errors import ImageError
from edge.inference.images import boxes_to_original, decode_image, letterbox, reference_composite, to_tensor
from schemas.manifests import ColorMode, InputSpec, ResizeMode
from tests.support.images import png_claiming

cv2 = pytest.importorskip("cv2")


def _png(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return bytes(encoded)


def test_decode_gives_grayscale_or_bgr_uint8() -> None:
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    assert np.array_equal(decode_image(_png(gray)), gray)
    colour = np.dstack([gray, gray // 2, gray // 3])
    assert np.array_equal(decode_image(_png(colour)), colour)
    rgba = np.dstack([colour, np.full_like(gray, 255)])
    assert decode_image(_png(rgba)).shape == (12, 10, 3)
    deep = (gray.astype(np.uint16) << 8) | 7
    assert np.array_equal(decode_image(_png(deep)), gray)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty image"),
        (b"this is a text file, not an image", "not a decodable image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "not a decodable image"),
    ],
)
def test_bad_bytes_are_refused_with_the_source(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=f"upload.png: {message}"):
        decode_image(data, source="upload.png")


def test_an_image_bomb_is_refused_from_its_header_before_decoding() -> None:
    # 10000 x 10000 is under the pixel cap, but 16-bit RGBA makes it 800 MB decoded (from a 100-byte file)
    bomb = png_claiming(10000, 10000, depth=16, colour=6)
    with pytest.raises(ImageError, match=r"bomb.png: the header claims 10000x10000 pixels x 4 channels x 2 byte"):
        decode_image(bomb, source="bomb.png")
    # the same size as 8-bit gray is 100 MB: under the default cap, over a 64 MiB one
    gray = png_claiming(10000, 10000, depth=8, colour=0)
    with pytest.raises(ImageError, match="over the limit of 67108864"):
        decode_image(gray, source="gray.png", max_decoded_bytes=64 * 1024**2)


def test_header_claims_of_other_formats_are_read_without_decoding() -> None:
    from edge.inference.images import claimed_size

    image = np.zeros((30, 40, 3), np.uint8)
    for extension in (".jpg", ".bmp", ".tiff"):
        assert claimed_size(bytes(cv2.imencode(extension, image)[1])) == (40, 30, 3, 1)
    deep = np.zeros((30, 40), np.uint16)
    assert claimed_size(bytes(cv2.imencode(".tiff", deep)[1])) == (40, 30, 1, 2)
    assert claimed_size(_png(deep)) == (40, 30, 1, 2)


def test_truncated_jpeg_is_refused_or_decoded_never_crashes() -> None:
    image = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    _, encoded = cv2.imencode(".jpg", image)
    truncated = bytes(encoded)[:200]
    try:
        decoded = decode_image(truncated, source="cut.jpg")
    except ImageError as exc:
        assert "cut.jpg" in str(exc)
    else:  # libjpeg may recover a partial image; then it must still be a proper array
        assert decoded.shape == (64, 64) and decoded.dtype == np.uint8


@pytest.mark.parametrize("shape", [(300, 400), (400, 300), (160, 160), (37, 251), (1000, 20)])
def test_letterbox_matches_ultralytics_exactly(shape: tuple[int, int]) -> None:
    augment = pytest.importorskip("ultralytics.data.augment")
    image = np.random.default_rng(1).integers(0, 255, (*shape, 3), dtype=np.uint8)
    ours, geometry = letterbox(image, 160, 160, 114)
    theirs = augment.LetterBox((160, 160), auto=False, stride=32)(image=image)
    assert np.array_equal(ours, theirs)
    ops = pytest.importorskip("ultralytics.utils.ops")
    box = np.array([[10.0, 12.0, 90.0, 70.0]], dtype=np.float32)
    assert np.allclose(boxes_to_original(box, geometry), ops.scale_boxes((160, 160), box.copy(), shape), atol=1e-4)


def test_boxes_map_back_to_original_pixels_and_are_clipped() -> None:
    image = np.zeros((200, 400), np.uint8)
    _, geometry = letterbox(image, 100, 100, 114)  # scale 0.25, 25 px of padding top and bottom
    assert (geometry.scale_x, geometry.pad_x, geometry.pad_y) == (0.25, 0, 25)
    boxes = np.array([[10, 35, 20, 45], [-5, 0, 150, 90]], dtype=np.float32)
    mapped = boxes_to_original(boxes, geometry)
    assert mapped[0].tolist() == [40, 40, 80, 80]
    assert mapped[1].tolist() == [0, 0, 400, 200]


def test_to_tensor_applies_colour_normalization_and_layout() -> None:
    gray = np.full((10, 20), 255, np.uint8)
    spec = InputSpec(
        width=8,
        height=8,
        channels=3,
        color=ColorMode.RGB,
        resize=ResizeMode.RESIZE,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
    tensor, _ = to_tensor([gray, gray], spec, np.dtype(np.float32))
    assert tensor.shape == (2, 3, 8, 8) and np.allclose(tensor, 1.0)
    nhwc = spec.model_copy(update={"layout": "NHWC"})
    tensor, _ = to_tensor([gray], nhwc, np.dtype(np.float16))
    assert tensor.shape == (1, 8, 8, 3) and tensor.dtype == np.float16
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[..., 2] = 255  # red in BGR
    tensor, _ = to_tensor([colour], spec.model_copy(update={"width": 4, "height": 4}), np.dtype(np.float32))
    assert np.allclose(tensor[0, 0], 1.0) and np.allclose(tensor[0, 2], -1.0)  # RGB order: red first


def test_the_reference_composite_holds_image_template_and_their_signed_difference() -> None:
    template = np.full((4, 6), 100, np.uint8)
    image = template.copy()
    image[0, 0] = 255  # extra copper
    image[1, 1] = 0  # missing copper
    composite = reference_composite(image, np.dstack([template] * 3))  # a BGR template is read as gray
    assert composite.shape == (4, 6, 3) and composite.dtype == np.uint8
    np.testing.assert_array_equal(composite[:, :, 0], image)
    np.testing.assert_array_equal(composite[:, :, 1], template)
    assert (composite[0, 0, 2], composite[1, 1, 2], composite[2, 2, 2]) == (205, 78, 128)
    with pytest.raises(ImageError, match=r"board.png 6x4 and its template 6x5 differ in size"):
        reference_composite(image, np.zeros((5, 6), np.uint8), source="board.png")
