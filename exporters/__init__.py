"""Exporters: turn PyTorch, Ultralytics YOLO and Keras models into the self-describing ONNX model bundle of the
contract (model.onnx + weights.safetensors + manifest.json), ending with a parity check."""
