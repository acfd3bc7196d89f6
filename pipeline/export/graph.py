"""Building one ONNX graph out of parts: a small builder over :mod:`onnx.helper`.

Each part of an exported model (the crops, the backbone, a classifier head) is either written
here node by node or converted by its own library (torch.onnx, skl2onnx, onnxmltools) into a
model of its own; :meth:`GraphBuilder.embed` copies such a model in under a name prefix, and
:meth:`GraphBuilder.finish` keeps only what the outputs need. Everything targets opset
:data:`OPSET` (18: the first with ``Resize(antialias=1)``) and ``ai.onnx.ml``
:data:`ML_OPSET`, ops that ONNX Runtime's CPU kernels (and so its WebAssembly build) run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["IR_VERSION", "ML_OPSET", "OPSET", "GraphBuilder", "tensor"]

OPSET = 18
ML_OPSET = 3
#: IR version 9 (ONNX 1.15): read by every ONNX Runtime since 1.16, the web build included.
IR_VERSION = 9


class GraphBuilder:
    """Nodes, constants and embedded models of one graph, with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.functions: list[onnx.FunctionProto] = []
        self.opsets: dict[str, int] = {"": OPSET}
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: Any, hint: str = "const", dtype: Any = None) -> str:
        """A constant tensor (an initializer); returns its name."""
        array = np.asarray(value, dtype=dtype)
        name = self.name(hint)
        if array.dtype.kind in "OUS":
            tensor = helper.make_tensor(
                name, TensorProto.STRING, array.shape, [str(v).encode() for v in array.ravel()]
            )
        else:
            tensor = numpy_helper.from_array(array, name)
        self.initializers.append(tensor)
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, domain: str = "", **attrs: Any):
        """Add one node; returns its output name (or a list of ``outputs`` names)."""
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(
            helper.make_node(
                op_type, list(inputs), names, name=self.name(f"n_{op_type}"), domain=domain, **attrs
            )
        )
        if domain:
            self.opsets.setdefault(domain, ML_OPSET if domain == "ai.onnx.ml" else 1)
        return names[0] if outputs == 1 else names

    def embed(self, model: onnx.ModelProto, inputs: Mapping[str, str], prefix: str) -> list[str]:
        """Copy ``model``'s graph in, its inputs fed by ``inputs`` (its input name -> a name
        here); returns the names of its outputs here, in order. A model on an older default
        opset is converted to :data:`OPSET` first."""
        versions = {o.domain or "": o.version for o in model.opset_import}
        if versions.get("", OPSET) != OPSET:
            model = onnx.version_converter.convert_version(model, OPSET)
            versions = {o.domain or "": o.version for o in model.opset_import}
        model = onnx.compose.add_prefix(model, prefix)
        graph = model.graph
        initialized = {t.name for t in graph.initializer}
        for value in graph.input:
            if value.name in initialized:
                continue
            outer = inputs[value.name[len(prefix) :]]
            self.nodes.append(helper.make_node("Identity", [outer], [value.name]))
        self.nodes.extend(graph.node)
        self.initializers.extend(graph.initializer)
        self.functions.extend(model.functions)
        for domain, version in versions.items():
            if domain in ("", "ai.onnx"):
                continue
            self.opsets[domain] = max(self.opsets.get(domain, 0), version)
        return [value.name for value in graph.output]

    def finish(
        self,
        inputs: Sequence[onnx.ValueInfoProto],
        outputs: Sequence[onnx.ValueInfoProto],
        metadata: Mapping[str, str] | None = None,
        name: str = "pipeline",
    ) -> onnx.ModelProto:
        """The model computing ``outputs`` from ``inputs``; nodes the outputs do not need are
        left out, and so are unused constants."""
        nodes, used = _needed(self.nodes, [o.name for o in outputs])
        initializers = [t for t in self.initializers if t.name in used]
        graph = helper.make_graph(nodes, name, list(inputs), list(outputs), initializers)
        opsets = [helper.make_opsetid(d, v) for d, v in sorted(self.opsets.items())]
        model = helper.make_model(graph, opset_imports=opsets, functions=self.functions)
        model.ir_version = IR_VERSION
        model.producer_name = "pipeline"
        for key, value in (metadata or {}).items():
            model.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(model)
        return model


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for attr in node.attribute:
        for graph in [attr.g, *attr.graphs] if attr.type in (5, 10) else []:
            for inner in graph.node:
                names.update(inner.input)
                names.update(_subgraph_inputs(inner))
    return names


def _needed(
    nodes: Sequence[onnx.NodeProto], outputs: Sequence[str]
) -> tuple[list[onnx.NodeProto], set[str]]:
    """The nodes ``outputs`` depend on (in their order) and every name they read."""
    wanted = set(outputs)
    keep = [False] * len(nodes)
    for i in range(len(nodes) - 1, -1, -1):
        if wanted.intersection(nodes[i].output):
            keep[i] = True
            wanted.update(n for n in nodes[i].input if n)
            wanted.update(_subgraph_inputs(nodes[i]))
    return [n for n, k in zip(nodes, keep, strict=True) if k], wanted


def tensor(name: str, elem_type: int, shape: Sequence[Any] | None) -> onnx.ValueInfoProto:
    """A graph input or output: ``shape`` entries are ints or dimension names."""
    return helper.make_tensor_value_info(name, elem_type, None if shape is None else list(shape))
