"""Exporters: PyTorch, Ultralytics YOLO and Keras models to the self-describing ONNX model bundle.

Every export embeds the task, classes and input spec in the ONNX metadata, writes ``model.onnx``,
``weights.safetensors`` (the training state) and ``manifest.json``, and ends with a parity check of ONNX Runtime
against the source framework. Frameworks are imported only inside the exporter that needs them.
"""
