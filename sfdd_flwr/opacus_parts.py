"""The Opacus pieces the app uses, imported without Opacus' change to logging.

Importing Opacus runs `logging.basicConfig` (in `opacus.utils.module_utils`), which gives
the root logger a handler of its own; every Flower log line printed after that import
would then appear twice, once in Flower's format and once in Opacus'. The handler is
removed again here, so import Opacus from this module.
"""

from __future__ import annotations

import logging

_root = logging.getLogger()
_handlers_before = list(_root.handlers)

from opacus import GradSampleModule  # noqa: E402
from opacus.accountants import RDPAccountant  # noqa: E402
from opacus.accountants.utils import get_noise_multiplier  # noqa: E402
from opacus.optimizers import DPOptimizer  # noqa: E402

for _handler in [handler for handler in _root.handlers if handler not in _handlers_before]:
    _root.removeHandler(_handler)

__all__ = ["DPOptimizer", "GradSampleModule", "RDPAccountant", "get_noise_multiplier"]
