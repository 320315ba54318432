"""What one reply may do to the combined state, whatever the method and the aggregator.

A reply that is finite and well-formed can still take the state over: values far
outside what the others hold, or a self-reported example count of 1e15 under FedAvg.
Before any rule combines the round's replies:

- its **weight** (its self-reported example count) is capped so that no reply carries
  more than `max-weight-share` of the round's total weight (the excess is not given to
  anyone: the capped replies share the cap), and a count more than 10 x the round's
  median is logged by node as implausible;
- it is **rejected** (logged by node) when it lies farther from the round's coordinate-wise
  median reply than `max-update-ratio` x the median of all replies' such distances (all
  arrays as one vector): values far outside what the others hold, an update far larger
  than theirs, or one pointing elsewhere. With two replies no median can tell which one
  is hostile: then one whose update norm (state_i - sent) exceeds `max-update-ratio` x
  the other's is rejected;
- optionally every update is **clipped** (norm bounding, Sun et al. 2019): to the fixed
  norm `update-clip`, or to `update-clip-ratio` x the round's median update norm.

The medians are over the round's replies, so a minority of outliers cannot move them far.
No Flower import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..settings.schema import NON_NEGATIVE, Rule, SettingsGroup, setting

_RATIO = Rule(lambda v: v == 0 or v >= 1, "0 (off) or a number >= 1")
IMPLAUSIBLE_WEIGHT_RATIO = 10.0


@dataclass(frozen=True)
class BoundsSettings(SettingsGroup):
    title = "Bounds on every reply (any method, any aggregator)"

    max_weight_share: float = setting(
        0.5, Rule(lambda v: 0 < v <= 1, "a number in (0, 1]"),
        "most of the round's total weight one reply may carry (its self-reported example count is capped); 1 = off",
    )
    max_update_ratio: float = setting(
        3.0, _RATIO,
        "reject a reply farther from the round's median reply than this multiple of the replies' median such "
        "distance (with 2 replies: an update norm this many times the other's); 0 = off",
    )
    update_clip: float = setting(0.0, NON_NEGATIVE, "clip every update to this L2 norm (norm bounding); 0 = off")
    update_clip_ratio: float = setting(
        0.0, Rule(lambda v: v == 0 or v > 0, "0 (off) or a number > 0"),
        "clip every update to this multiple of the round's median update norm (adaptive norm bounding); 0 = off",
    )


@dataclass
class BoundedReplies:
    """The replies a rule may combine: their states and weights (after capping and
    clipping), which of the inputs they are, one line per intervention, and every input
    reply's update norm before clipping (what norm bounding acts on)."""

    states: list[dict[str, torch.Tensor]]
    weights: list[float]
    kept: list[int]
    notes: list[str] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    clipped: list[int] = field(default_factory=list)
    capped: list[int] = field(default_factory=list)
    update_norms: list[float] = field(default_factory=list)

    def named(self, names: list[Any]) -> dict[str, Any]:
        """What the bounds did, by reply name (input order): clipped and capped replies,
        and every reply's update norm (round metrics keep the non-empty entries)."""
        return {
            "updates_clipped": [names[i] for i in self.clipped],
            "weights_capped": [names[i] for i in self.capped],
            "update_norms": {str(name): round(norm, 6) for name, norm in zip(names, self.update_norms)},
        }


def update_norm(sent: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of state - sent over all arrays (in float64)."""
    return math.sqrt(sum(float(((state[k].double() - sent[k].double()) ** 2).sum()) for k in sent))


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])


def distances_to_median_reply(states: Sequence[Mapping[str, torch.Tensor]]) -> list[float]:
    """Each state's L2 distance (all arrays as one vector) to the coordinate-wise median."""
    flat = torch.stack([torch.cat([state[k].double().reshape(-1) for k in states[0]]) for state in states])
    centre = flat.median(dim=0).values
    return [float((row - centre).norm()) for row in flat]


def outliers(params: BoundsSettings, sent, states, names: Sequence[str]) -> tuple[list[int], list[str]]:
    """Indices of the replies `max-update-ratio` rejects, and why (one line each)."""
    if params.max_update_ratio <= 0 or len(states) < 2:
        return [], []
    if len(states) == 2:
        norms = [update_norm(sent, state) for state in states]
        small, large = sorted(range(2), key=lambda i: norms[i])
        if norms[small] > 0 and norms[large] > params.max_update_ratio * norms[small]:
            return [large], [f"{names[large]}: its update norm {norms[large]:.4g} is {norms[large] / norms[small]:.3g} "
                             f"x the other reply's ({norms[small]:.4g}), above max-update-ratio="
                             f"{params.max_update_ratio:g}: rejected"]
        return [], []
    distances = distances_to_median_reply(states)
    typical = median(distances)
    if typical <= 0:
        return [], []
    found = [i for i, distance in enumerate(distances) if distance > params.max_update_ratio * typical]
    return found, [
        f"{names[i]}: its distance to the round's median reply, {distances[i]:.4g}, is {distances[i] / typical:.3g} x "
        f"the replies' median ({typical:.4g}), above max-update-ratio={params.max_update_ratio:g}: rejected"
        for i in found
    ]


def capped_weights(weights: Sequence[float], share: float) -> list[float]:
    """Weights with the largest lowered to one common cap, so that none exceeds `share` of
    the total; the others keep theirs. If no cap can (share < 1 / n), all become equal."""
    if share >= 1 or len(weights) < 2:
        return list(weights)
    order = sorted(range(len(weights)), key=lambda i: weights[i], reverse=True)
    for count, index in enumerate(order, start=1):
        rest = float(sum(weights[i] for i in order[count:]))  # summed afresh: 1e15 - 1e15 loses the rest
        if count * share >= 1 or count == len(order):
            break
        cap = share * rest / (1 - count * share)
        following = weights[order[count]] if count < len(order) else 0.0
        if following <= cap <= weights[index]:
            return [min(weight, cap) for weight in weights]
        if cap > weights[index]:
            return list(weights)
    return [1.0] * len(weights)


def scaled_update(sent: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], factor: float) -> dict:
    """sent + factor x (state - sent), in the state's dtypes."""
    return {k: (sent[k].double() + factor * (state[k].double() - sent[k].double())).to(state[k].dtype) for k in sent}


def bound_replies(
    params: BoundsSettings,
    sent: Mapping[str, torch.Tensor],
    states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    names: Sequence[str],
) -> BoundedReplies:
    """Apply the bounds to one round's well-formed replies (`names` say whose they are)."""
    states = [dict(state) for state in states]
    weights = [float(weight) for weight in weights]
    result = BoundedReplies(states, weights, list(range(len(states))))
    if len(states) > 1:
        typical = median(weights)
        capped = capped_weights(weights, params.max_weight_share)
        for index, (weight, new) in enumerate(zip(weights, capped)):
            implausible = weight > IMPLAUSIBLE_WEIGHT_RATIO * typical
            if implausible or new < weight:
                result.notes.append(
                    f"{names[index]}: num-examples={weight:g}"
                    + (f" is {weight / typical:.3g} x the round's median ({typical:g}), implausible" if implausible
                       else "")
                    + (f"; its share of the round's weight is capped at {params.max_weight_share:g}" if new < weight
                       else "")
                )
            if new < weight:
                result.capped.append(index)
        weights[:] = capped
    result.rejected, notes = outliers(params, sent, states, names)
    result.notes += notes
    norms = [update_norm(sent, state) for state in states]
    result.update_norms = norms
    median_norm = median([norms[i] for i in range(len(norms)) if i not in result.rejected]) if norms else 0.0
    bound = params.update_clip if params.update_clip > 0 else math.inf
    if params.update_clip_ratio > 0 and median_norm > 0:
        bound = min(bound, params.update_clip_ratio * median_norm)
    if math.isfinite(bound):
        for index, norm in enumerate(norms):
            if index not in result.rejected and norm > bound:
                states[index] = scaled_update(sent, states[index], bound / norm)
                result.clipped.append(index)
                result.notes.append(f"{names[index]}: update norm {norm:.4g} clipped to {bound:.4g}")
    keep = [index for index in range(len(states)) if index not in result.rejected]
    result.states = [states[index] for index in keep]
    result.weights = [weights[index] for index in keep]
    result.kept = keep
    return result
