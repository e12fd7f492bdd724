"""The student: code indices -> code vectors -> small network -> the teacher's last blocks and fc.

With about 7,000 training images a student learnt from scratch generalises poorly. This one
therefore ends in the ported teacher's own last ``tail_blocks`` residual blocks, global pooling
and fc layer, and learns only to predict the 4x4x256 feature map that enters them. The
teacher's layers before that point hold almost all of its 271 M multiply-accumulates and are
the part replaced. The reused tail costs about 1.2 M with one block and 20.1 M with two,
because the teacher's second-to-last block runs at 4x4 and its last one at 2x2.
``teacher_trunk`` computes the feature target.

Layout of the learnt part: a 1x1 projection of the code vectors, ``blocks // 2``
depthwise-separable residual blocks at the code grid, a stride-2 block to twice the width,
the remaining blocks, a bilinear resize to 4x4 and a 1x1 projection to the 256 channels.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from vqbench.models.teacher_torch import DlibResNet

#: Channels and side of the teacher feature map the student predicts.
TRUNK_CHANNELS = 256
TRUNK_SIZE = 4

#: Maximum number of teacher blocks a tail may reuse, because only the last three take a 4x4x256 map.
MAX_TAIL_BLOCKS = 3


def _check_tail_blocks(tail_blocks: int) -> None:
    if not 1 <= tail_blocks <= MAX_TAIL_BLOCKS:
        raise ValueError(f"tail_blocks must be between 1 and {MAX_TAIL_BLOCKS}, got {tail_blocks}")


def teacher_trunk(teacher: DlibResNet, chips: torch.Tensor, tail_blocks: int = 1) -> torch.Tensor:
    """Run the teacher up to its last ``tail_blocks`` residual blocks: (N,3,150,150) -> (N,256,4,4)."""
    _check_tail_blocks(tail_blocks)
    x = (chips - teacher.channel_means) / 256.0
    x = F.relu(teacher.affine(teacher.conv(x)))
    pool = teacher.spec.stem_pool
    x = F.max_pool2d(x, pool.kernel, pool.stride, pool.padding)
    for block in teacher.blocks[:-tail_blocks]:
        x = block(x)
    return x


class TeacherTail(nn.Module):
    """A copy of the teacher's last ``tail_blocks`` residual blocks, global average pool and fc layer."""

    def __init__(self, teacher: DlibResNet, tail_blocks: int = 1) -> None:
        super().__init__()
        _check_tail_blocks(tail_blocks)
        if tail_blocks == 1:
            # One block keeps its old attribute name, so weights saved before tails grew still load.
            self.block = copy.deepcopy(teacher.blocks[-1])
        else:
            self.block = nn.Sequential(*(copy.deepcopy(block) for block in teacher.blocks[-tail_blocks:]))
        self.fc = copy.deepcopy(teacher.fc)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(features).mean(dim=(2, 3)))


class SeparableBlock(nn.Module):
    """Depthwise 3x3 + pointwise 1x1 convolution with batch norm and ReLU; residual when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False)
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.depthwise(x)))
        y = self.norm2(self.pointwise(y))
        return F.relu(y + x) if self.residual else F.relu(y)


class Student(nn.Module):
    """Map code indices (N, H', W') to 128-d embeddings in the teacher's space."""

    def __init__(
        self,
        codebook: torch.Tensor,
        teacher: DlibResNet,
        width: int = 128,
        blocks: int = 4,
        tune_tail: bool = False,
        tail_blocks: int = 1,
    ) -> None:
        super().__init__()
        # The codebook is copied, not shared, so the exported student is self-contained.
        self.register_buffer("codebook", codebook.detach().clone())
        code_dim = codebook.shape[1]
        self.project = nn.Sequential(nn.Conv2d(code_dim, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        high = [SeparableBlock(width, width) for _ in range(blocks // 2)]
        low = [SeparableBlock(2 * width, 2 * width) for _ in range(blocks - blocks // 2)]
        self.body = nn.Sequential(*high, SeparableBlock(width, 2 * width, stride=2), *low)
        self.to_trunk = nn.Conv2d(2 * width, TRUNK_CHANNELS, 1)
        self.tail = TeacherTail(teacher, tail_blocks)
        self.tail.requires_grad_(tune_tail)

    def set_codebook(self, codebook: torch.Tensor) -> None:
        """Replace the code vectors (after the VQ-VAE's codebook changed)."""
        self.codebook.copy_(codebook.detach())

    def trunk_features(self, indices: torch.Tensor | None, code_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the teacher's (N, 256, 4, 4) map; ``code_vectors`` (N, D, H', W') overrides the lookup."""
        if code_vectors is None:
            code_vectors = F.embedding(indices, self.codebook).permute(0, 3, 1, 2)
        x = self.body(self.project(code_vectors))
        x = F.interpolate(x, size=(TRUNK_SIZE, TRUNK_SIZE), mode="bilinear", align_corners=False)
        return F.relu(self.to_trunk(x))

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.tail(self.trunk_features(indices))
