"""Parameter and multiply-accumulate counts of a PyTorch model, read from its graph.

``count_macs`` runs one forward pass under ``torch.utils.flop_counter.FlopCounterMode`` on a copy
of the model on the ``meta`` device, so no arithmetic is done and the model is not touched.
FlopCounterMode counts 2 FLOPs per multiply-accumulate for the matrix products it recognises
(convolutions, ``mm``, ``addmm``, ``bmm``, attention), so MACs = FLOPs / 2. Element-wise work
(bias adds, scale and shift, activations, pooling, residual adds) is not counted, which is the
usual convention for quoting a network's MACs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Count the values in a module's parameters (buffers such as running means are not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_macs(module: nn.Module, input_shape: Sequence[int], dtype: torch.dtype = torch.float32) -> int:
    """Count the multiply-accumulates of one forward pass on an input of ``input_shape``.

    The count covers the whole input, so pass batch size 1 for a per-sample figure. Raises
    ValueError if the forward pass contains no operation that FlopCounterMode counts.
    """
    meta_module = copy.deepcopy(module).to("meta").eval()
    sample = torch.zeros(tuple(input_shape), dtype=dtype, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta_module(sample)
    flops = counter.get_total_flops()
    if flops <= 0:
        raise ValueError(
            f"no convolution or matrix product was counted for {type(module).__name__} on input {tuple(input_shape)}; "
            "check that the module's forward pass uses torch operators"
        )
    return flops // 2
