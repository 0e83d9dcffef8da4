"""The edge inference engine: ONNX Runtime sessions, the classifier and detector inferencers, classify-then-detect."""
