"""Edge agent: serves the ONNX classifier and detector next to the camera, buffers results and labels in SQLite,
fine-tunes locally and exchanges signed model updates with the hub. Imports ``schemas`` and never ``hub``."""
