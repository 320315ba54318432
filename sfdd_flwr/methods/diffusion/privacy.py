"""Sample-level DP-SGD inside one client, with Opacus' own pieces: `GradSampleModule`
(per-example gradients of the UNet's layers), `DPOptimizer` (clipping and Gaussian noise)
and `RDPAccountant`, whose history travels in the client's state across rounds so that
the ε reported after round r covers every step the client took in rounds 1..r.

Each image is drawn once per step with one noise sample and one timestep (Poisson
sampling at rate batch / N), so one step touches each example at most once, as the
accountant assumes (several noise draws per image would count as several examples).
"""

from __future__ import annotations

import torch

from ...opacus_parts import DPOptimizer, GradSampleModule, RDPAccountant, get_noise_multiplier


def noise_multiplier_for(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The noise multiplier that spends `target_epsilon` (RDP accountant) in `steps` steps."""
    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps, accountant="rdp"
        )
    )


class PrivateTraining:
    """One client's DP-SGD: wraps a model and optimiser for a round and accounts every step."""

    def __init__(
        self, noise_multiplier: float, clip: float, expected_batch: int, delta: float, history: torch.Tensor | None = None
    ) -> None:
        self.noise_multiplier, self.clip, self.expected_batch, self.delta = noise_multiplier, clip, expected_batch, delta
        self.accountant = RDPAccountant()
        if history is not None:
            self.accountant.history = [(float(s), float(q), int(n)) for s, q, n in history.tolist()]

    def wrap(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator
    ) -> tuple[GradSampleModule, DPOptimizer]:
        """Per-example gradients for `model`; `optimizer` clips them and adds noise drawn
        from a generator seeded by the client's."""
        device = next(model.parameters()).device
        noise = torch.Generator(device=device)
        noise.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        private_model = GradSampleModule(model)
        private_optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.clip,
            expected_batch_size=self.expected_batch,
            generator=noise,
        )
        return private_model, private_optimizer

    def unwrap(self, private_model: torch.nn.Module) -> None:
        """Remove Opacus' hooks: the plain model goes back into the shared state."""
        if isinstance(private_model, GradSampleModule):
            private_model._close()

    def count_step(self, sample_rate: float) -> None:
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=sample_rate)

    @property
    def epsilon(self) -> float:
        return float(self.accountant.get_epsilon(self.delta)) if self.accountant.history else 0.0

    def history(self) -> torch.Tensor:
        """The accountant's state as a tensor (noise multiplier, sample rate, steps) per row."""
        return torch.tensor(self.accountant.history, dtype=torch.float64).reshape(-1, 3)
