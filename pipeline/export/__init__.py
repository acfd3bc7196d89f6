"""Export a trained model to ONNX, and its offline page (:mod:`pipeline.export.page`)."""
