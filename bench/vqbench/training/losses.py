"""Loss terms of VQ-VAE training and student distillation.

All terms are means over the batch and roughly of order 1 at the start of training, so the
weights in ``LossConfig`` are comparable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error on the 0..1 scale of (N,3,150,150) chips given on 0..255."""
    return (reconstruction - target).abs().mean() / 255.0


def cosine_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(prediction, target) over the batch."""
    return (1.0 - F.cosine_similarity(prediction, target, dim=1)).mean()


def feature_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between feature maps, divided by the target's mean square so that 1 means 'predicts 0'."""
    return F.mse_loss(prediction, target) / target.pow(2).mean().clamp_min(1e-8)


def relational_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between the batch's pairwise cosine-similarity matrices (relational distillation).

    Matching the similarities between samples, and not only each sample's direction, keeps
    the ordering of pairs that verification thresholds depend on.
    """
    if prediction.shape[0] < 2:
        return prediction.new_zeros(())
    p = F.normalize(prediction, dim=1)
    t = F.normalize(target, dim=1)
    # Similarities between different faces differ by a few hundredths, so x10 brings the term to the scale of the others.
    return F.mse_loss(p @ p.t(), t @ t.t()) * 10.0
