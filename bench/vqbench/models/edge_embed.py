"""The edge-embed baseline: a small embedder that runs on the edge and sends the embedding.

It is the VQ pipeline without the quantiser. The same depthwise-separable encoder produces a
continuous (code_dim, H', W') map. The student's head (separable blocks, then the teacher's
last residual block and fc) turns that map into a 128-d embedding in the teacher's space. It is
trained by the same distillation losses as the student.
"""

from __future__ import annotations

import torch
from torch import nn

from vqbench.models.student import Student
from vqbench.models.teacher_torch import DlibResNet
from vqbench.models.vqvae import Encoder, VQVAEShape


class EdgeEmbedder(nn.Module):
    """Chips (N,3,150,150) on 0..255 -> embeddings (N,128)."""

    def __init__(
        self,
        shape: VQVAEShape,
        teacher: DlibResNet,
        width: int = 128,
        blocks: int = 4,
        tune_tail: bool = False,
        tail_blocks: int = 1,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(shape)
        # The head never looks codes up, so its codebook is a single placeholder vector.
        self.head = Student(
            torch.zeros(1, shape.code_dim), teacher, width=width, blocks=blocks, tune_tail=tune_tail, tail_blocks=tail_blocks
        )

    def trunk_features(self, chips: torch.Tensor) -> torch.Tensor:
        """Predict the teacher's (N,256,4,4) map that enters the reused blocks."""
        return self.head.trunk_features(None, code_vectors=self.encoder(chips))  # type: ignore[arg-type]

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        return self.head.tail(self.trunk_features(chips))
