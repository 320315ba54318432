"""Where one gradient-matching update spends its time, and the DC reference's loop beside it.

    python benchmarks/matching_profile.py --data-dir DATA [--ipc 1 --batch-real 64]
        [--dc-reference PATH]

On one quickstart client's data (MNIST, client 0 of 5), with the DC ConvNet (width 128):

1. the parts of the per-class loop, timed apart (median of 5 after a warm-up): the real
   batches' forward and backward (all classes), the synthetic images' gradients with their
   graph and the image gradient, and the whole local update;
2. the operators of the real part (torch.profiler, self CPU time), with the throughput of
   the convolutions from their multiply-adds;
3. with `--dc-reference PATH` (a checkout of github.com/VICO-UoE/DatasetCondensation,
   imported from there, never copied), one DC iteration of the reference's own loop
   (its ConvNet, `match_loss` and `epoch`) at the same IPC and batch-real, timed alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from sfdd_flwr.data.datasets import ClassPools, PartitionRequest, load_partition
from sfdd_flwr.methods.gradient_matching.distance import match_distance
from sfdd_flwr.methods.gradient_matching.settings import GradientMatchingSettings
from sfdd_flwr.methods.gradient_matching.update import local_distill_update
from sfdd_flwr.methods.image_set import initial_synthetic_images
from sfdd_flwr.models.convnet import NetworkSpec, build_network
from sfdd_flwr.seeding import make_generator

SPEC = NetworkSpec(channels=1, num_classes=10, image_size=(28, 28))


def median_seconds(function, repeats: int = 5) -> float:
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def conv_multiply_adds(network: torch.nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """Multiply-adds of the convolutions for `images`: (forward, backward). The backward
    computes the weight gradient of every convolution and the input gradient of all but
    the first (the images need none)."""
    counts: list[int] = []

    def hook(module, inputs, output):
        counts.append(output.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1])

    handles = [m.register_forward_hook(hook) for m in network.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        network(images)
    for handle in handles:
        handle.remove()
    return float(sum(counts)), float(sum(counts) + sum(counts[1:]))


def reference_iteration(path: Path, pools: ClassPools, ipc: int, batch_real: int, seed: int) -> None:
    """One DC iteration as the reference's main.py runs it (no DSA)."""
    sys.path.insert(0, str(path))
    from networks import ConvNet
    from utils import epoch, match_loss

    torch.manual_seed(seed)
    args = types.SimpleNamespace(device="cpu", dis_metric="ours", dsa=False)
    outer, inner = GradientMatchingSettings().loops(ipc)
    images_syn = torch.randn((10 * ipc, 1, 28, 28), requires_grad=True)
    labels_syn = torch.arange(10).repeat_interleave(ipc)
    optimizer_img = torch.optim.SGD([images_syn], lr=0.1, momentum=0.5)
    net = ConvNet(channel=1, num_classes=10, net_width=128, net_depth=3, net_act="relu",
                  net_norm="instancenorm", net_pooling="avgpooling", im_size=(28, 28))
    net.train()
    parameters = list(net.parameters())
    optimizer_net = torch.optim.SGD(net.parameters(), lr=0.01)
    criterion = torch.nn.CrossEntropyLoss()
    for outer_step in range(outer):
        loss = torch.tensor(0.0)
        for c in range(10):
            indices = pools.indices_by_class[c]
            real = pools.data.images[indices[np.random.permutation(len(indices))[:batch_real]]]
            grads_real = [g.detach().clone() for g in torch.autograd.grad(
                criterion(net(real), torch.full((real.shape[0],), c)), parameters)]
            grads_syn = torch.autograd.grad(
                criterion(net(images_syn[c * ipc:(c + 1) * ipc]), torch.full((ipc,), c)), parameters, create_graph=True)
            loss += match_loss(grads_syn, grads_real, args)
        optimizer_img.zero_grad()
        loss.backward()
        optimizer_img.step()
        if outer_step == outer - 1:
            break
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(images_syn.detach().clone(), labels_syn), batch_size=256, shuffle=True)
        for _ in range(inner):
            epoch("train", loader, net, optimizer_net, criterion, args, aug=False)


def rate(multiply_adds: float, seconds: float) -> str:
    """Throughput of an operator from its multiply-adds and time."""
    return f"{2 * multiply_adds / seconds / 1e9:.0f} GFLOP/s" if seconds > 0 else "not in the profile"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--ipc", type=int, default=1)
    parser.add_argument("--batch-real", type=int, default=64)
    parser.add_argument("--dc-reference", type=Path, help="a checkout of VICO-UoE/DatasetCondensation")
    args = parser.parse_args()
    pools = ClassPools(load_partition(PartitionRequest("mnist", args.data_dir, 0, 5)), 10)
    generator = torch.Generator().manual_seed(0)
    network = build_network(SPEC, 0)
    parameters = list(network.parameters())
    batches = [pools.sample(c, args.batch_real, generator) for c in range(10)]
    synthetic = initial_synthetic_images(SPEC, args.ipc, make_generator(0, "init")).requires_grad_(True)

    def real_part():
        for c, batch in enumerate(batches):
            torch.autograd.grad(F.cross_entropy(network(batch), torch.full((batch.shape[0],), c)), parameters)

    grads_real = [[g.detach() for g in torch.autograd.grad(
        F.cross_entropy(network(batch), torch.full((batch.shape[0],), c)), parameters)] for c, batch in enumerate(batches)]

    def synthetic_part():
        loss = torch.zeros(())
        for c in range(10):
            images = synthetic[c * args.ipc:(c + 1) * args.ipc]
            grads = torch.autograd.grad(F.cross_entropy(network(images), torch.full((args.ipc,), c)), parameters,
                                        create_graph=True)
            loss = loss + match_distance(grads_real[c], grads, "ours")
        torch.autograd.grad(loss, [synthetic])

    params = GradientMatchingSettings(batch_real=args.batch_real)
    start = initial_synthetic_images(SPEC, args.ipc, make_generator(0, "init"))

    def whole_update():
        local_distill_update(start, pools, SPEC, params, network_seed=1, generator=make_generator(0, "real"))

    print(f"IPC {args.ipc}, batch-real {args.batch_real}, {torch.get_num_threads()} torch threads, "
          f"DC loops {params.loops(args.ipc)}")
    real_seconds = median_seconds(real_part)
    print(f"real batches, forward + backward (10 classes): {real_seconds:.3f} s")
    print(f"synthetic gradients with their graph + image gradient: {median_seconds(synthetic_part):.3f} s")
    print(f"whole local update: {median_seconds(whole_update, 3):.3f} s")
    forward, backward = conv_multiply_adds(network, torch.cat(batches))
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        real_part()
    events = {event.key: event.self_cpu_time_total / 1e6 for event in profiled.key_averages()}
    conv_forward, conv_backward = events.get("aten::mkldnn_convolution", 0.0), events.get("aten::convolution_backward", 0.0)
    total = sum(events.values())
    print(f"real part under the profiler: {total:.3f} s of operator self time; convolutions "
          f"{conv_forward:.3f} s forward ({rate(forward, conv_forward)}), "
          f"{conv_backward:.3f} s backward ({rate(backward, conv_backward)})")
    for name, seconds in sorted(events.items(), key=lambda item: -item[1])[:10]:
        print(f"  {name}: {seconds:.3f} s ({100 * seconds / total:.1f} %)")
    if args.dc_reference:
        seconds = median_seconds(lambda: reference_iteration(args.dc_reference, pools, args.ipc, args.batch_real, 1), 3)
        print(f"DC reference, one iteration: {seconds:.3f} s")


if __name__ == "__main__":
    main()
