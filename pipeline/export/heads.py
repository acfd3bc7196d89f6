"""Classifier heads as ONNX graphs: one function per registry classifier.

Each converter takes the fitted estimator a model file holds (a scikit-learn ``Pipeline``
whose last step is ``"clf"``) and returns a model with one input, ``features`` float32
``[N, D]`` (the backbone's embeddings), and one output, ``probabilities`` float32 ``[N, C]``
(columns in ``classes_`` order), computing what the estimator's ``predict_proba`` computes:

- ``logreg``, ``svc``: the whole Pipeline (scaler included) by skl2onnx;
- ``svc_approx``: the scaler and the calibrated LinearSVC by skl2onnx, the Nystroem map
  (which skl2onnx does not convert) as MatMul / Exp here;
- ``xgboost``: the booster by onnxmltools (the wrapper's renormalisation added here);
- ``nn``: the torch MLP by ``torch.onnx`` with a Softmax, after the scaler;
- ``knn``: cosine k-nearest-neighbours as MatMul + TopK + a vote over one-hot labels;
- ``ensemble``: its members' heads, averaged with ``weights_`` (or its stacker on them).

:data:`HEADS` maps a classifier name to its converter.
Converters are known to be wrong in corner cases, which is why every export is compared with
``predict`` before it is written (:mod:`pipeline.export.verify`).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from .graph import ML_OPSET, OPSET, GraphBuilder, tensor

__all__ = ["HEADS", "head_model"]

FEATURES, PROBABILITIES = "features", "probabilities"


def _sklearn(estimator: Any, n_features: int) -> onnx.ModelProto:
    """skl2onnx's graph of a fitted Pipeline/classifier, reduced to its probabilities."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_sklearn(
            estimator,
            initial_types=[(FEATURES, FloatTensorType([None, n_features]))],
            options={id(final): {"zipmap": False}},
            target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
        )
    return _only_probabilities(model)


def _only_probabilities(model: onnx.ModelProto, name: str = PROBABILITIES) -> onnx.ModelProto:
    """``model`` with one output, ``name`` (its probabilities output), renamed ``probabilities``."""
    g = GraphBuilder()
    out = g.embed(model, {FEATURES: FEATURES}, "m_")
    source = next(o for o in out if o.endswith(name) or o == "m_" + name)
    g.nodes.append(onnx.helper.make_node("Identity", [source], [PROBABILITIES]))
    return _finish(g, _model_dim(model))


def _model_dim(model: onnx.ModelProto) -> Any:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return dims[1].dim_value if len(dims) > 1 and dims[1].dim_value else None


def _finish(g: GraphBuilder, n_features: Any) -> onnx.ModelProto:
    return g.finish(
        [tensor(FEATURES, TensorProto.FLOAT, ["N", n_features])],
        [tensor(PROBABILITIES, TensorProto.FLOAT, ["N", None])],
    )


def _logreg(estimator: Any, n_features: int) -> onnx.ModelProto:
    return _sklearn(estimator, n_features)


def _svc(estimator: Any, n_features: int) -> onnx.ModelProto:
    return _sklearn(estimator, n_features)


def _svc_approx(estimator: Any, n_features: int) -> onnx.ModelProto:
    """scale -> Nystroem (here) -> calibrated LinearSVC (skl2onnx)."""
    steps = dict(estimator.steps)
    nystroem, final = steps["map"], estimator.steps[-1][1]
    if nystroem.kernel != "rbf" or nystroem.kernel_params:
        raise ValueError(f"svc_approx: Nystroem kernel {nystroem.kernel!r} is not exported")
    g = GraphBuilder()
    x = FEATURES
    if "scale" in steps:
        (x,) = g.embed(_scaler(steps["scale"], n_features), {FEATURES: x}, "scale_")
    components = np.asarray(nystroem.components_, np.float32)
    gamma = nystroem.gamma if nystroem.gamma is not None else 1.0 / components.shape[1]
    # ||x - c||^2 = |x|^2 - 2 x.c + |c|^2, then exp(-gamma d), then the normalisation
    x2 = g.op("ReduceSumSquare", x, g.const([1], "axis", np.int64), keepdims=1)
    xc = g.op("MatMul", x, g.const(components.T, "components_t"))
    c2 = g.const((components.astype(np.float64) ** 2).sum(axis=1)[None].astype(np.float32), "c2")
    d = g.op("Add", g.op("Sub", x2, g.op("Mul", xc, g.const(np.float32(2), "two"))), c2)
    d = g.op("Max", d, g.const(np.float32(0), "zero"))
    k = g.op("Exp", g.op("Mul", d, g.const(np.float32(-gamma), "gamma")))
    mapped = g.op("MatMul", k, g.const(np.asarray(nystroem.normalization_, np.float32).T, "norm"))
    head = _sklearn(final, components.shape[0])
    (proba,) = g.embed(head, {FEATURES: mapped}, "clf_")
    g.nodes.append(onnx.helper.make_node("Identity", [proba], [PROBABILITIES]))
    return _finish(g, n_features)


def _scaler(scaler: Any, n_features: int) -> onnx.ModelProto:
    """A fitted StandardScaler: ``(x - mean) / scale``, as scikit-learn computes it."""
    g = GraphBuilder()
    out = FEATURES
    if scaler.with_mean:
        out = g.op("Sub", out, g.const(np.asarray(scaler.mean_, np.float32), "mean"))
    if scaler.with_std:
        out = g.op("Div", out, g.const(np.asarray(scaler.scale_, np.float32), "scale"))
    g.nodes.append(onnx.helper.make_node("Identity", [out], [PROBABILITIES]))
    return _finish(g, n_features)


def _leading(estimator: Any, g: GraphBuilder, n_features: int) -> tuple[str, Any]:
    """The scaler (if any) as nodes; returns (its output, the final step)."""
    steps = list(estimator.steps)
    x = FEATURES
    for name, step in steps[:-1]:
        if type(step).__name__ != "StandardScaler":
            raise ValueError(f"pipeline step {name!r} ({type(step).__name__}) is not exported")
        (x,) = g.embed(_scaler(step, n_features), {FEATURES: x}, f"{name}_")
    return x, steps[-1][1]


def _xgboost(estimator: Any, n_features: int) -> onnx.ModelProto:
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    g = GraphBuilder()
    x, final = _leading(estimator, g, n_features)
    booster = final.estimator_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_xgboost(
            booster,
            initial_types=[(FEATURES, FloatTensorType([None, n_features]))],
            target_opset=15,  # the newest onnxmltools converts to; raised to OPSET on embedding
        )
    outputs = g.embed(model, {FEATURES: x}, "xgb_")
    proba = next(o for o in outputs if "prob" in o)
    total = g.op("ReduceSum", proba, g.const([1], "axis", np.int64), keepdims=1)
    g.nodes.append(onnx.helper.make_node("Div", [proba, total], [PROBABILITIES]))
    return _finish(g, n_features)


def _nn(estimator: Any, n_features: int) -> onnx.ModelProto:
    import torch

    g = GraphBuilder()
    x, final = _leading(estimator, g, n_features)
    module = torch.nn.Sequential(*final.module_, torch.nn.Softmax(dim=1)).cpu().float().eval()
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(2, n_features),),
            buffer,
            input_names=[FEATURES],
            output_names=[PROBABILITIES],
            dynamic_axes={FEATURES: {0: "N"}, PROBABILITIES: {0: "N"}},
            dynamo=False,
            opset_version=OPSET,
        )
    (proba,) = g.embed(onnx.load_from_string(buffer.getvalue()), {FEATURES: x}, "nn_")
    g.nodes.append(onnx.helper.make_node("Identity", [proba], [PROBABILITIES]))
    return _finish(g, n_features)


def _knn(estimator: Any, n_features: int) -> onnx.ModelProto:
    """Cosine similarity to the (normalised) training rows, the k most similar, their votes."""
    g = GraphBuilder()
    x, final = _leading(estimator, g, n_features)
    knn = final.knn_
    train = np.asarray(knn._fit_X, np.float64)
    train /= np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-300)
    labels = np.asarray(knn._y).ravel()
    onehot = np.eye(len(final.classes_), dtype=np.float32)[labels]
    axis = g.const([1], "axis", np.int64)
    norm = g.op("Sqrt", g.op("ReduceSumSquare", x, axis, keepdims=1))
    unit = g.op("Div", x, g.op("Max", norm, g.const(np.float32(1e-30), "tiny")))
    similarity = g.op("MatMul", unit, g.const(train.T.astype(np.float32), "train_t"))
    k = g.const([int(final.k_)], "k", np.int64)
    top, index = g.op("TopK", similarity, k, outputs=2, axis=1, largest=1, sorted=1)
    votes = g.op("Gather", g.const(onehot, "onehot"), index)  # [N, k, C]
    if final.weights == "distance":
        distance = g.op("Sub", g.const(np.float32(1), "one"), top)
        distance = g.op("Max", distance, g.const(np.float32(0), "zero"))
        exact = g.op("Cast", g.op("LessOrEqual", distance, g.const(np.float32(0), "z")), to=1)
        any_exact = g.op("ReduceMax", exact, axis, keepdims=1)
        inverse = g.op("Reciprocal", g.op("Max", distance, g.const(np.float32(1e-30), "t")))
        weights = g.op("Where", g.op("Cast", any_exact, to=9), exact, inverse)
    else:
        weights = g.op("Expand", g.const(np.float32(1), "one"), g.op("Shape", top))
    weighted = g.op("Mul", votes, g.op("Unsqueeze", weights, g.const([2], "ax2", np.int64)))
    summed = g.op("ReduceSum", weighted, axis, keepdims=0)
    total = g.op("ReduceSum", summed, axis, keepdims=1)
    g.nodes.append(onnx.helper.make_node("Div", [summed, total], [PROBABILITIES]))
    return _finish(g, n_features)


def _ensemble(estimator: Any, n_features: int) -> onnx.ModelProto:
    """The tied-with-the-best ensemble: each member's head on the same features, then their
    weighted mean (``weights_``), or the stacker (a logistic regression, skl2onnx) on the
    members' concatenated probabilities, as ``TiedEnsembleClassifier.predict_proba``."""
    steps = list(estimator.steps) if hasattr(estimator, "steps") else [("clf", estimator)]
    if len(steps) != 1:
        raise ValueError("ensemble: a pipeline step before the ensemble is not exported")
    final = steps[0][1]
    classes = [str(c) for c in final.classes_]
    g = GraphBuilder()
    probas = []
    for i, (name, member) in enumerate(zip(final.names_, final.estimators_, strict=True)):
        if [str(c) for c in member.classes_] != classes:
            raise ValueError(f"ensemble: member {name!r} saw other classes than the ensemble")
        (proba,) = g.embed(head_model(name, member, n_features), {FEATURES: FEATURES}, f"m{i}_")
        probas.append(proba)
    if final.stacker_ is not None:
        if [str(c) for c in final.stacker_.classes_] != classes:
            raise ValueError("ensemble: the stacker saw other classes than the ensemble")
        stacked = g.op("Concat", *probas, axis=1)
        stacker = _sklearn(final.stacker_, len(probas) * len(classes))
        (total,) = g.embed(stacker, {FEATURES: stacked}, "stack_")
    else:
        weights = np.asarray(final.weights_, np.float32)
        total = g.op("Mul", probas[0], g.const(weights[0], "w0"))
        for i, proba in enumerate(probas[1:], start=1):
            total = g.op("Add", total, g.op("Mul", proba, g.const(weights[i], f"w{i}")))
    g.nodes.append(onnx.helper.make_node("Identity", [total], [PROBABILITIES]))
    return _finish(g, n_features)


#: classifier name (the registry's) -> converter(fitted estimator, n_features) -> head model.
HEADS: dict[str, Callable[[Any, int], onnx.ModelProto]] = {
    "logreg": _logreg,
    "svc": _svc,
    "svc_approx": _svc_approx,
    "xgboost": _xgboost,
    "nn": _nn,
    "knn": _knn,
    "ensemble": _ensemble,
}


def head_model(clf: str, estimator: Any, n_features: int) -> onnx.ModelProto:
    """The head of classifier ``clf`` (a :data:`HEADS` name): ``features`` -> ``probabilities``."""
    if clf not in HEADS:
        raise ValueError(f"classifier {clf!r} has no ONNX converter (exported: {', '.join(HEADS)})")
    return HEADS[clf](estimator, n_features)
