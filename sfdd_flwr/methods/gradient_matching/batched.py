"""All classes' matching gradients in one batched computation (`torch.func.vmap`).

DC computes, per class, one gradient of the network's loss on a real batch and one on
the class's synthetic images, in a Python loop: tens of small sequential kernels. With a
per-sample normalisation (instance, layer or group norm, or none) the classes are
independent, so both sets of gradients are one `vmap` over classes of `torch.func.grad`
on the same parameters; the synthetic one stays differentiable w.r.t. the images, which
is all the image update needs. Batch norm mixes the samples of a batch (and updates
running statistics), so it keeps the per-class loop (`BATCHABLE_NORMS`).

It is meant for GPUs, where the loop's many small kernels leave the device idle. On a
CPU the loop is already at an efficient batch size and one batch of all classes is
slower (larger working set; `vmap` also decomposes GroupNorm's backward into many
elementwise kernels), so the loop stays the default (RESULTS.md section 3).

Real batches of unequal size (a class with fewer local images than `batch-real`) are
padded and the padding gets weight 0; the per-sample normalisation keeps padded rows
from touching the others.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

BATCHABLE_NORMS = ("instancenorm", "layernorm", "groupnorm", "none")


def stack_batches(batches: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Batches `[n_k, ...]` -> (`[K, max n, ...]` zero-padded, weights `[K, max n]`).

    A row's weight is 1 / n_k (0 for padding), so a weighted sum is the class mean.
    """
    longest = max(batch.shape[0] for batch in batches)
    stacked = batches[0].new_zeros((len(batches), longest, *batches[0].shape[1:]))
    weights = batches[0].new_zeros((len(batches), longest))
    for k, batch in enumerate(batches):
        stacked[k, : batch.shape[0]] = batch
        weights[k, : batch.shape[0]] = 1.0 / batch.shape[0]
    return stacked, weights


class ClassGradients:
    """Per-class parameter gradients of a network, all classes at once.

    `targets` are distributions `[K, num_classes]` (one-hot for plain labels), so one
    batched function serves DC's labels and LDPO-RLD's soft targets.
    """

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network
        self.names = [name for name, _ in network.named_parameters()]

        def weighted_loss(params, buffers, images, target, weights):
            logits = functional_call(network, (params, buffers), (images,))
            per_sample = F.cross_entropy(logits, target.expand(logits.shape[0], -1), reduction="none")
            return (per_sample * weights).sum()

        self._per_class = vmap(grad(weighted_loss), in_dims=(None, None, 0, 0, 0))

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
    ) -> list[torch.Tensor]:
        """Gradients `[K, *parameter shape]`, in `network.parameters()` order.

        They carry a graph back to `images` when `images` requires grad.
        """
        params = {name: parameter.detach() for name, parameter in self.network.named_parameters()}
        buffers = dict(self.network.named_buffers())
        grads = self._per_class(params, buffers, images, targets, weights)
        return [grads[name] for name in self.names]


def one_hot_targets(classes: Sequence[int], num_classes: int, device: torch.device | str) -> torch.Tensor:
    return F.one_hot(torch.tensor(list(classes), device=device), num_classes).to(torch.float32)
