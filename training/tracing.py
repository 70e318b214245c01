"""PyTorch to ONNX, the one way every exported graph is written (model.onnx, and a retrieval
package's encoder.onnx and rank.onnx): the TorchScript tracer at one opset, batch axes dynamic."""

import warnings
from pathlib import Path

import torch
from torch import nn

OPSET = 17


def trace_to_onnx(module: nn.Module, example: tuple[torch.Tensor, ...], path: Path, inputs: tuple[str, ...],
                  outputs: tuple[str, ...], dynamic: dict[str, dict[int, str]]) -> None:
    """Trace `module` (in eval mode: the exporter restores the module's own mode on all it holds
    afterwards, so a wrapper left in training mode would switch its model back to it) on
    `example` and write the graph to `path`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, example, str(path), dynamo=False, opset_version=OPSET,
                          input_names=list(inputs), output_names=list(outputs), dynamic_axes=dynamic)
