"""Seeds derived from (run seed, round, client, purpose): no global reseeding, no clocks.

Every random draw in the project comes from a `torch.Generator` made here, so two runs
with the same configuration draw the same numbers, whichever process or order the
clients run in.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(run_seed: int, *parts: object) -> int:
    """A 63-bit seed that is a pure function of the run seed and the parts."""
    text = "/".join(str(part) for part in (run_seed, *parts))
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generator(run_seed: int, *parts: object) -> torch.Generator:
    """A CPU generator seeded with `derive_seed(run_seed, *parts)`.

    Draws are made on the CPU and moved to the device afterwards, so CPU and GPU
    runs see the same random numbers.
    """
    generator = torch.Generator(device="cpu")
    generator.manual_seed(derive_seed(run_seed, *parts))
    return generator
