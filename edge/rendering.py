"""Images for people: a stored sample drawn with its boxes and class names, as the review page and the demo show it."""

from __future__ import annotations

from typing import Any


def render_sample(data: bytes, boxes: list[dict[str, Any]]) -> bytes:
    """The image as PNG with boxes and class names drawn (OpenCV's built-in font: nothing to download)."""
    import cv2

    from edge.inference.images import decode_image

    image = decode_image(data)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    for box in boxes:
        top_left = (int(box["x1"]), int(box["y1"]))
        cv2.rectangle(image, top_left, (int(box["x2"]), int(box["y2"])), (0, 0, 255), 2)
        caption = f"{box.get('class_name', '')} {float(box.get('score', 1.0)):.2f}"
        cv2.putText(
            image,
            caption,
            (top_left[0], max(10, top_left[1] - 3)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (0, 0, 255),
            1,
            cv2.LINE_AA,
        )
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("could not encode the image as PNG")
    return bytes(encoded)
