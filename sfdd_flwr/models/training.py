"""Network training shared by distillation (inner loops) and evaluation."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def train_network_epoch(
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """One shuffled epoch of cross-entropy training; returns the mean loss."""
    network.train()
    order = torch.randperm(images.shape[0], generator=generator).to(images.device)
    total, seen = 0.0, 0
    for start in range(0, images.shape[0], batch_size):
        batch = order[start : start + batch_size]
        inputs = images[batch]
        if augment is not None:
            inputs = augment(inputs)
        loss = F.cross_entropy(network(inputs), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * batch.numel()
        seen += batch.numel()
    return total / max(seen, 1)

