"""The edge inference engine: ONNX Runtime sessions, the classifier and detector inferencers, classify-then-detect.

| module | what it is |
|---|---|
| `sessions` | `load_model`: providers (TensorRT / CUDA / CPU by config), the model's metadata, `SessionRunner` |
| `base` | `Inferencer`: load, preprocess, forward, postprocess, predict |
| `classifier`, `detector` | whole-image or template-crops classifiers; YOLO-style or template-crops detectors |
| `images`, `templates`, `proposals` | decoding, tensors; golden templates by id; where a board differs from it |
| `pipeline` | `InspectionPipeline`: classify, then detect where the verdict asks for it; atomic model swaps |
| `watchdog` | marks the engine unhealthy when a call runs past its limit |
| `errors` | `ModelLoadError`, `ImageError` |
"""
