"""An encoder (BERT-class transformer) exported to ONNX and run by ONNX Runtime on the CPU.

Used by encoder runners (embeddings) as an engine in place of PyTorch: the same graph runs in
ONNX Runtime's kernels with no Python between ops and no GIL held, which on small CPU batches
is much faster than PyTorch eager or a TorchScript trace (docs/benchmarks.md).

The import step exports once (`export_encoder`) into a folder next to the weights; the runner
opens it (`OnnxEncoder`) and must still check it against PyTorch before trusting it: exporters
have produced wrong graphs (the TorchScript-based `torch.onnx.export(dynamo=False)` bakes
BERT's position-id buffer wrongly under transformers 5: cosine 0.94 to eager), so the graph is
made with the `torch.export` (dynamo) exporter and every load compares.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

log = logging.getLogger("botmodels.runners.onnx")

GRAPH_DIR = "onnx"  # inside the stored model's folder
GRAPH_FILE = "model.onnx"  # weights beside it in model.onnx.data when they are large
Head = Literal["hidden", "logits"]


def graph_path(model_dir: Path) -> Path:
    return model_dir / GRAPH_DIR / GRAPH_FILE


def export_encoder(
    model: Any, sample: Mapping[str, Any], out_dir: Path, *, head: Head = "hidden"
) -> None:
    """Export `model` (a transformers encoder in float32, eval mode) to `out_dir/model.onnx`.

    `sample`: a tokenizer's batch (PyTorch tensors) whose keys name the graph's inputs, in the
    order given; batch and sequence axes are dynamic. `head`: the output, `last_hidden_state`
    ("hidden", for pooling outside the graph) or `logits` (a classification head)."""
    import torch

    names = list(sample)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            output = self.model(**dict(zip(names, tensors, strict=True)))
            return output.last_hidden_state if head == "hidden" else output.logits

    out_dir.mkdir(parents=True, exist_ok=True)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer chatter
        torch.onnx.export(
            Encoder().eval(),
            tuple(sample[name] for name in names),
            str(out_dir / GRAPH_FILE),
            input_names=names,
            output_names=["output"],
            dynamic_shapes=(tuple({0: batch, 1: sequence} for _ in names),),
            opset_version=18,
            dynamo=True,
            verbose=False,
        )


def narrowing_matmuls(graph: Any) -> set[str]:
    """Weight MatMuls whose input is wider than their output: a transformer's feed-forward
    output projections (and a classifier head). Their inputs carry the activation's outliers,
    which per-channel int8 weights with dynamic int8 activations lose most accuracy on."""
    weights = {init.name: list(init.dims) for init in graph.initializer}
    names = set()
    for node in graph.node:
        shape = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if shape is not None and len(shape) == 2 and shape[0] > shape[1]:
            names.add(node.name)
    return names


def quantize_int8(source: Path) -> bytes:
    """The graph with dynamic int8 (per-channel weights) on every weight MatMul except the
    narrowing ones (`narrowing_matmuls`), as bytes ONNX Runtime can open."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False).graph
    keep_float = narrowing_matmuls(graph)
    inits = {init.name for init in graph.initializer}
    targets = [
        node.name
        for node in graph.node
        if node.op_type == "MatMul" and node.input[1] in inits and node.name not in keep_float
    ]
    with tempfile.TemporaryDirectory(prefix="botmodels-int8-") as tmp, _quiet_quantizer():
        out = Path(tmp) / "model.int8.onnx"
        quantize_dynamic(
            str(source),
            str(out),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_quantize=targets,
        )
        return out.read_bytes()


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantizer logs advice and one line per tensor on the root logger; the
    runner logs what was chosen instead."""

    def keep(record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


class GraphError(RuntimeError):
    """The graph cannot be opened (missing, corrupt, or not one ONNX Runtime can run)."""


def _session_errors() -> tuple[type[Exception], ...]:
    """ONNX Runtime's load-time exceptions: its own classes, not subclasses of RuntimeError."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = "Fail InvalidArgument InvalidGraph InvalidProtobuf NoSuchFile NotImplemented"
    names += " RuntimeException EPFail NoModel"
    return tuple(getattr(state, name) for name in names.split() if hasattr(state, name))


class OnnxEncoder:
    """One ONNX Runtime session over an exported encoder, sized to `threads` CPUs.

    `run` may be called from any thread; it releases the GIL while the graph runs."""

    def __init__(self, model_dir: Path, *, threads: int | None, int8: bool = False) -> None:
        import onnxruntime as ort

        source = graph_path(model_dir)
        if not source.is_file():
            raise GraphError(f"no ONNX graph at {source} (re-import the model)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's own choice
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads would otherwise spin for work, taking the CPU the server's
        # event loop needs between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        errors: tuple[type[Exception], ...] = (*_session_errors(), OSError, ValueError)
        try:
            model: str | bytes = quantize_int8(source) if int8 else str(source)
            self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except errors as exc:
            raise GraphError(f"{source}: {exc}") from exc
        self.input_names: Sequence[str] = [i.name for i in self.session.get_inputs()]
        self.int8 = int8

    def run(self, feeds: Mapping[str, npt.NDArray[Any]]) -> npt.NDArray[np.float32]:
        inputs = {name: np.asarray(feeds[name], dtype=np.int64) for name in self.input_names}
        output = self.session.run(None, inputs)[0]
        return np.asarray(output, dtype=np.float32)
