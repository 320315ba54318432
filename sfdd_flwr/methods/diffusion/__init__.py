"""A federated diffusion generator as a method: each client trains a class-conditional
denoising diffusion model (diffusers' UNet2DModel, DDPM objective, classifier-free
guidance by label dropout) on its own partition; the server averages the weights with
Flower's FedAvg (`flower_fedavg`), optionally keeps an EMA of them, and evaluates a set of
samples drawn with DDIM. No real image leaves a client: the generator's weights do (what
the membership attack and the optional sample-level DP-SGD, with Opacus, are about), and
the samples can be released. The DP accountant's state stays in the client's state.

The shared state is the UNet's `state_dict`; nothing of a client's data or optimiser
travels. No hooks: Doorping's trigger update and LDPO-RLD's soft targets do not apply.

diffusers and Opacus (seconds to import) are imported by `model` and `privacy` only,
which this module loads when the method first needs them: every process that merely
composes the settings, or runs another method, starts without them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from ...data.datasets import DatasetSpec, LabelledImages, denormalise, normalise
from ...seeding import derive_seed, make_generator
from ..base import LocalJob, LocalResult, State, SynthesisMethod, class_labels
from .sampling import sample_images
from .settings import DiffusionSettings
from .training import round_learning_rate, train_locally

if TYPE_CHECKING:
    from ...settings import Settings
    from .privacy import PrivateTraining

EMA_PREFIX = "ema."


def to_model_space(images: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """Normalised dataset images -> [-1, 1] pixels (the diffusion model's space)."""
    return denormalise(images, spec) * 2 - 1


def from_model_space(samples: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """[-1, 1] samples -> the dataset's normalised space (what evaluation trains on)."""
    pixels = ((samples.clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8)
    return normalise(pixels, spec)


class Diffusion(SynthesisMethod):
    name = "diffusion"
    settings_group = DiffusionSettings
    round_metrics = {"denoising-loss": "mean", "dp-epsilon": "max", "dp-delta": "max"}
    checkpoint_file = "generator.pt"
    flower_fedavg = True

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.params = settings.group(DiffusionSettings)
        self.spec = settings.dataset_spec
        self.ema: State | None = None

    @property
    def null_label(self) -> int:
        return self.spec.num_classes

    def new_unet(self):
        from .model import build_unet

        return build_unet(self.params, self.spec, derive_seed(self.settings.seed, "diffusion", "init"))

    # ----- server side -----
    def initial_state(self) -> State:
        return {key: value.detach().clone() for key, value in self.new_unet().state_dict().items()}

    def finish_round(self, server_round: int, state: State) -> None:
        """Server-side EMA of the averaged weights (`diffusion-ema`)."""
        decay = self.params.diffusion_ema
        if decay <= 0:
            return
        if self.ema is None:
            self.ema = {key: value.clone() for key, value in state.items()}
            return
        for key, value in state.items():
            self.ema[key].mul_(decay).add_(value, alpha=1 - decay)

    def sampling_weights(self, state: State) -> State:
        return self.ema if self.ema is not None else state

    def labelled_set(
        self, state: State, server_round: int, device: torch.device, report: Callable[[str], None] | None = None
    ) -> LabelledImages:
        model = self.new_unet()
        model.load_state_dict(self.sampling_weights(state))
        labels = class_labels(self.spec.num_classes, self.params.diffusion_samples_per_class)
        if report is not None:
            report(
                f"round {server_round}: sampling {len(labels)} images ({self.params.diffusion_samples_per_class} per "
                f"class, {self.params.diffusion_sampling_steps} DDIM steps, guidance {self.params.diffusion_guidance:g})"
            )
        from .model import sampling_schedule

        samples = sample_images(
            model, sampling_schedule(self.params), labels, self.params, self.null_label,
            make_generator(self.settings.seed, "diffusion", "samples", server_round), device, report,
        )
        return LabelledImages(from_model_space(samples, self.spec), labels)

    def describe_set_size(self) -> str:
        return f"{self.params.diffusion_samples_per_class} samples per class"

    def describe_round(self, round_metrics: Mapping[str, Any]) -> str:
        text = f"denoising loss {round_metrics.get('denoising_loss', float('nan')):.4f}"
        if "dp_epsilon" in round_metrics:
            text += f" | ε {round_metrics['dp_epsilon']:.2f} (δ {round_metrics.get('dp_delta', 0):g})"
        return text

    def checkpoint(self, state: State) -> dict[str, torch.Tensor]:
        ema = {EMA_PREFIX + key: value for key, value in (self.ema or {}).items()}
        return dict(state) | ema

    def restore(self, saved: Mapping[str, Any]) -> State:
        tensors = {key: value for key, value in saved.items() if key != "metadata"}
        ema = {key[len(EMA_PREFIX):]: value for key, value in tensors.items() if key.startswith(EMA_PREFIX)}
        self.ema = ema or None
        return {key: value for key, value in tensors.items() if not key.startswith(EMA_PREFIX)}

    # ----- client side -----
    def private_training(self, job: LocalJob, count: int) -> PrivateTraining | None:
        """This client's DP-SGD, with its accountant's history from earlier rounds; the
        noise multiplier for a target ε follows from the run's settings and the client's
        data size, the same in every round.

        A client that finds no history in a later round (a resumed run starts its clients
        afresh) assumes it took part in every earlier round: its ε is then an upper bound,
        never an underestimate."""
        params = self.params
        if not params.private:
            return None
        from .privacy import PrivateTraining, noise_multiplier_for

        sample_rate = min(1.0, params.diffusion_batch / count)
        if "dp-noise-multiplier" in job.method_state:
            sigma = float(job.method_state["dp-noise-multiplier"])
        elif params.dp_target_epsilon > 0:
            steps = self.settings.num_server_rounds * params.diffusion_local_steps
            sigma = noise_multiplier_for(params.dp_target_epsilon, params.dp_delta, sample_rate, steps)
        else:
            sigma = params.dp_noise_multiplier
        history = job.method_state.get("dp-history")
        if history is None and job.server_round > 1:
            history = torch.tensor([[sigma, sample_rate, params.diffusion_local_steps * (job.server_round - 1)]],
                                   dtype=torch.float64)
        return PrivateTraining(sigma, params.dp_clip, params.diffusion_batch, params.dp_delta, history)

    def local_update(self, job: LocalJob) -> LocalResult:
        params = self.params
        model = self.new_unet()
        model.load_state_dict(job.state)
        images = to_model_space(job.data.images, self.spec).to(job.device)
        labels = job.data.labels.to(job.device)
        private = self.private_training(job, len(labels))
        from .model import noise_schedule

        result = train_locally(
            model, noise_schedule(params), images, labels, params,
            round_learning_rate(params, job.server_round, self.settings.num_server_rounds), self.null_label,
            job.generator("diffusion"), job.device, private, job.progress, self.settings.progress_seconds,
        )
        metrics = {"denoising-loss": result.loss, "images-per-second": result.images_seen / max(result.seconds, 1e-9)}
        kept: dict[str, torch.Tensor] = {}
        if private is not None:
            metrics |= {"dp-epsilon": private.epsilon, "dp-delta": params.dp_delta,
                        "dp-noise-multiplier": private.noise_multiplier}
            kept = {"dp-history": private.history(),
                    "dp-noise-multiplier": torch.tensor(private.noise_multiplier, dtype=torch.float64)}
        state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
        return LocalResult(state, metrics, kept)
