"""What the ServerApp and the ClientApp say to each other: message keys, the error code
of a node whose data does not fit, and the conversions between records and the core's
objects. Both apps import it; neither imports the other."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

from .data.datasets import LabelledImages
from .methods.base import State
from .settings import Settings

STATE_KEY = "state"  # ArrayRecord: the shared state (train messages and replies)
LABELLED_SET_KEY = "labelled-set"  # ArrayRecord: images and labels to evaluate (evaluate messages)
CONFIG_KEY = "config"  # ConfigRecord: the run's settings and the round
METRICS_KEY = "metrics"  # MetricRecord of a reply, with num-examples
NODE_KEY = "node"  # ConfigRecord of an evaluation reply: the node's name
NUM_EXAMPLES_KEY = "num-examples"
ACCURACIES_KEY = "accuracies"
SERVER_ROUND_KEY = "server-round"
RUN_DIR_KEY = "run-dir"
# Settings that name things on the server's machine only: not checked on a node.
SERVER_ONLY_KEYS = (SERVER_ROUND_KEY, RUN_DIR_KEY, "resume-from")
# Error code of a node whose data or settings do not fit the run (Flower's own are 0-8).
NODE_DATA_ERROR_CODE = 100


def state_record(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord(
        {key: Array(np.ascontiguousarray(value.detach().cpu().numpy())) for key, value in state.items()}
    )


def record_state(record: ArrayRecord) -> State:
    return {key: torch.from_numpy(array.numpy().copy()) for key, array in record.items()}


def labelled_record(labelled: LabelledImages) -> ArrayRecord:
    return ArrayRecord(
        {
            "images": Array(np.ascontiguousarray(labelled.images.detach().cpu().numpy(), dtype=np.float32)),
            "labels": Array(np.ascontiguousarray(labelled.labels.detach().cpu().numpy(), dtype=np.int64)),
        }
    )


def record_labelled(record: ArrayRecord) -> LabelledImages:
    return LabelledImages(
        torch.from_numpy(record["images"].numpy().copy()), torch.from_numpy(record["labels"].numpy().copy())
    )


def record_bytes(record: ArrayRecord | None) -> int:
    return 0 if record is None else sum(len(array.data) for array in record.values())


def settings_config(settings: Settings, **extra: Any) -> ConfigRecord:
    """The run's settings as a ConfigRecord, with e.g. the round (kebab-case keys)."""
    return ConfigRecord(settings.to_record() | {key.replace("_", "-"): value for key, value in extra.items()})


def settings_from_config(config: ConfigRecord) -> Settings:
    """The run's settings as the server sent them (what names its machine left out)."""
    return Settings.from_mapping(dict(config), ignore=SERVER_ONLY_KEYS)


def metrics_dict(record: MetricRecord) -> dict[str, Any]:
    """Plain values of a MetricRecord (lists stay lists)."""
    return {key: [float(v) for v in value] if isinstance(value, list) else value for key, value in record.items()}
