"""Classify image files with a model from `pipeline export`, using only onnxruntime, numpy
and Pillow (no torch, no scikit-learn: the resize, the network and the classifier are in
the .onnx file).  Usage: python onnx_predict.py model.onnx IMAGE [IMAGE ...]  -> CSV"""

import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
classes = json.loads(session.get_modelmeta().custom_metadata_map["class_names"])
print("path,prediction,probability")
for path in sys.argv[2:]:
    with Image.open(path) as image:  # decoding stays outside the graph: upright RGB pixels
        pixels = np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.uint8)
    (probabilities,) = session.run(["probabilities"], {"image": pixels[None]})  # [1, H, W, 3]
    best = int(probabilities[0].argmax())
    print(f"{path},{classes[best]},{probabilities[0, best]:.6f}")
