"""Loss terms of VQ-VAE training and student distillation.

All terms are means over the batch and roughly of order 1 at the start of training, so the
weights in ``LossConfig`` are comparable.

Raw dlib embeddings lie in a narrow cone. On the LFW training images the mean cosine between
an embedding and the set's mean embedding is 0.91, between two different people 0.84, and
between two images of one person 0.95. A prediction with cosine 0.92 to its target is thus
no closer than an impostor. The trainer therefore subtracts the training-set mean from
predictions and targets (``LossConfig.center_embeddings``) before the cosine terms.
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


def feature_loss(prediction: torch.Tensor, target: torch.Tensor, target_mean: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between feature maps, divided by the target's mean square around ``target_mean``.

    With the training-set mean map as ``target_mean``, 1 means "predicts the average face".
    """
    spread = target if target_mean is None else target - target_mean
    return F.mse_loss(prediction, target) / spread.pow(2).mean().clamp_min(1e-8)


def relational_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between the batch's pairwise cosine-similarity matrices (relational distillation).

    Matching the similarities between samples, and not only each sample's direction, keeps
    the ordering of pairs that verification thresholds depend on.
    """
    if prediction.shape[0] < 2:
        return prediction.new_zeros(())
    p = F.normalize(prediction, dim=1)
    t = F.normalize(target, dim=1)
    return F.mse_loss(p @ p.t(), t @ t.t())


def hint_loss(prediction: torch.Tensor, standardized_target: torch.Tensor) -> torch.Tensor:
    """MSE between the hint head's output and a teacher map standardised per channel.

    A head that predicts the training-set mean map scores 1.
    """
    return F.mse_loss(prediction, standardized_target)
