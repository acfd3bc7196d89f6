"""The images -> embeddings engine used by extract, predict and ImageEmbedder.

sources (listing, PIL decode) -> preprocess (the weights' preset) -> decoding (parallel
engines) -> backbones (torchvision registry) -> runners (torch / ONNX Runtime, ``embed_images``).
"""
