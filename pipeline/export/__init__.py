"""Export: a model file from ``pipeline fit`` as one ONNX graph, pixels to probabilities.

``pipeline export`` / ``python -m pipeline.export`` (:mod:`.cli`) calls :func:`.run.run_export`:
:mod:`.build` assembles the graph from :mod:`.crops` (resize and crop as ONNX ops), the
backbone and :mod:`.heads` (one converter per classifier), :mod:`.verify` checks it against
``predict`` before :mod:`.run` writes it, :mod:`.page` writes the offline page, and :mod:`.runtime` runs an exported model (what
``predict --model x.onnx`` uses). Importing this package imports none of them: ``predict``
and ``--help`` stay light. See docs/export.md.
"""

from __future__ import annotations
