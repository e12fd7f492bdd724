"""The VQ-VAE: a depthwise-separable edge encoder, an EMA codebook and a cloud decoder.

Data flow (sizes for the default 112 px input and three stride-2 stages):

    chip (N,3,150,150), RGB on 0..255
      -> bilinear resize to input_size_px, scale to -1..1
      -> 3x3 stride-2 convolution, then one depthwise-separable stride-2 block per extra width
      -> ``extra_blocks`` stride-1 blocks at the grid (14x14), 1x1 projection to code_dim
      -> nearest code vector by squared distance: indices (N,14,14), K values each
    indices -> code vectors -> decoder (upsample x2 per stage) -> (N,3,150,150) on 0..255

The codebook is learnt by exponential moving averages of the encoder outputs assigned to each
code, not by gradients.
Codes whose moving-average usage falls below a threshold are restarted on random encoder
outputs of the current batch, so that all K codes stay in use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqbench.errors import ModelError
from vqbench.models.student import SeparableBlock

CHIP_SIZE_PX = 150


@dataclass(frozen=True)
class VQVAEShape:
    """Architecture of a VQ-VAE; ``input_size_px`` must equal ``grid * 2 ** len(widths)``."""

    input_size_px: int = 112
    widths: tuple[int, ...] = (24, 48, 96)
    extra_blocks: int = 2
    grid: int = 14
    codebook_size: int = 256
    code_dim: int = 32
    decoder_widths: tuple[int, ...] = (96, 48, 24)

    def __post_init__(self) -> None:
        expected = self.grid * 2 ** len(self.widths)
        if self.input_size_px != expected:
            raise ModelError(
                f"input_size_px {self.input_size_px} does not fit grid {self.grid} with {len(self.widths)} "
                f"stride-2 stages; use input_size_px {expected} or change grid or widths"
            )
        if len(self.decoder_widths) != len(self.widths):
            raise ModelError(f"decoder_widths {self.decoder_widths} needs one width per encoder stage ({len(self.widths)})")

    @property
    def bits_per_index(self) -> int:
        return max(1, (self.codebook_size - 1).bit_length())


def _to_unit_range(chips: torch.Tensor, size_px: int) -> torch.Tensor:
    if chips.shape[-1] != size_px:
        chips = F.interpolate(chips, size=(size_px, size_px), mode="bilinear", align_corners=False)
    return chips / 127.5 - 1.0


class Encoder(nn.Module):
    """Chips (N,3,150,150) on 0..255 -> continuous codes (N, code_dim, grid, grid)."""

    def __init__(self, shape: VQVAEShape) -> None:
        super().__init__()
        self.input_size_px = shape.input_size_px
        first = shape.widths[0]
        self.stem = nn.Sequential(nn.Conv2d(3, first, 3, 2, 1, bias=False), nn.BatchNorm2d(first), nn.ReLU())
        stages = [SeparableBlock(a, b, stride=2) for a, b in zip(shape.widths[:-1], shape.widths[1:])]
        stages += [SeparableBlock(shape.widths[-1], shape.widths[-1]) for _ in range(shape.extra_blocks)]
        self.stages = nn.Sequential(*stages)
        self.project = nn.Conv2d(shape.widths[-1], shape.code_dim, 1)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        return self.project(self.stages(self.stem(_to_unit_range(chips, self.input_size_px))))


class Decoder(nn.Module):
    """Code vectors (N, code_dim, grid, grid) -> chips (N,3,150,150) on 0..255."""

    def __init__(self, shape: VQVAEShape) -> None:
        super().__init__()
        widths = shape.decoder_widths
        self.project = nn.Sequential(nn.Conv2d(shape.code_dim, widths[0], 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.refine = SeparableBlock(widths[0], widths[0])
        self.ups = nn.ModuleList(
            SeparableBlock(a, b) for a, b in zip(widths, widths[1:] + (widths[-1],))
        )
        self.out = nn.Conv2d(widths[-1], 3, 3, 1, 1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        x = self.refine(self.project(codes))
        for block in self.ups:
            x = block(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        x = torch.sigmoid(self.out(x)) * 255.0
        return F.interpolate(x, size=(CHIP_SIZE_PX, CHIP_SIZE_PX), mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class QuantizerOutput:
    """Straight-through quantised codes, their indices and the commitment loss."""

    quantized: torch.Tensor  # (N, D, H, W), gradients pass to the encoder output
    indices: torch.Tensor  # (N, H, W) int64
    commitment_loss: torch.Tensor


class EMAQuantizer(nn.Module):
    """Nearest-neighbour vector quantiser whose codebook follows EMA statistics."""

    def __init__(self, codebook_size: int, code_dim: int, decay: float = 0.99, epsilon: float = 1e-5) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.decay = decay
        self.epsilon = epsilon
        codebook = torch.randn(codebook_size, code_dim) * 0.1
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", codebook.clone())

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Return the index of the nearest code vector for each row of ``flat`` (M, D)."""
        distances = (
            flat.pow(2).sum(1, keepdim=True)
            - 2.0 * flat @ self.codebook.t()
            + self.codebook.pow(2).sum(1).unsqueeze(0)
        )
        return distances.argmin(dim=1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors (N, D, H, W) of indices (N, H, W)."""
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        n, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        indices = self.nearest(flat.detach())
        if self.training:
            self._ema_update(flat.detach(), indices)
        quantized = self.lookup(indices.view(n, h, w))
        commitment = F.mse_loss(z, quantized.detach())
        # Straight-through estimator: the decoder's gradient flows to the encoder unchanged.
        quantized = z + (quantized - z).detach()
        return QuantizerOutput(quantized, indices.view(n, h, w), commitment)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        one_hot = F.one_hot(indices, self.codebook_size).type_as(flat)
        self.cluster_size.mul_(self.decay).add_(one_hot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(one_hot.t() @ flat, alpha=1 - self.decay)
        # Laplace smoothing keeps unused codes from dividing by zero.
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (total + self.codebook_size * self.epsilon) * total
        self.codebook.copy_(self.embed_sum / smoothed.unsqueeze(1))

    @torch.no_grad()
    def restart_dead_codes(self, z: torch.Tensor, threshold: float, generator: torch.Generator | None = None) -> int:
        """Move codes whose EMA usage is below ``threshold`` onto random encoder outputs; return how many."""
        dead = (self.cluster_size < threshold).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        picks = torch.randint(0, flat.shape[0], (dead.numel(),), generator=generator)
        self.codebook[dead] = flat[picks]
        self.embed_sum[dead] = flat[picks]
        self.cluster_size[dead] = 1.0
        return int(dead.numel())


class VQVAE(nn.Module):
    """Encoder, EMA quantiser and decoder."""

    def __init__(self, shape: VQVAEShape, ema_decay: float = 0.99) -> None:
        super().__init__()
        self.shape = shape
        self.encoder = Encoder(shape)
        self.quantizer = EMAQuantizer(shape.codebook_size, shape.code_dim, ema_decay)
        self.decoder = Decoder(shape)

    def encode(self, chips: torch.Tensor) -> QuantizerOutput:
        return self.quantizer(self.encoder(chips))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.lookup(indices))

    def forward(self, chips: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        quantized = self.encode(chips)
        return self.decoder(quantized.quantized), quantized


class EdgeEncoder(nn.Module):
    """Export wrapper: chips (N,3,150,150) on 0..255 -> code indices (N, H', W') int64."""

    def __init__(self, vqvae: VQVAE) -> None:
        super().__init__()
        self.encoder = vqvae.encoder
        self.quantizer = vqvae.quantizer

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        z = self.encoder(chips)
        n, d, h, w = z.shape
        return self.quantizer.nearest(z.permute(0, 2, 3, 1).reshape(-1, d)).view(n, h, w)


class CloudDecoder(nn.Module):
    """Export wrapper: code indices (N, H', W') -> reconstructed chips (N,3,150,150) on 0..255."""

    def __init__(self, vqvae: VQVAE) -> None:
        super().__init__()
        self.quantizer = vqvae.quantizer
        self.decoder = vqvae.decoder

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.lookup(indices))


def codebook_usage(indices: torch.Tensor, codebook_size: int) -> tuple[float, int]:
    """Return the perplexity of the code histogram and the number of codes never used."""
    counts = torch.bincount(indices.flatten(), minlength=codebook_size).float()
    probabilities = counts / counts.sum()
    entropy = -(probabilities[probabilities > 0] * probabilities[probabilities > 0].log()).sum()
    return float(entropy.exp()), int((counts == 0).sum())
