"""What the benchmark compares: one vanilla model, its expedited counterpart with the same weights, and inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class BenchmarkCase:
    """A side-by-side comparison. ``backbone`` picks the submodule reported on its own (e.g. a Swin backbone)."""

    name: str
    vanilla: nn.Module
    expedited: nn.Module
    inputs: dict[str, torch.Tensor]
    description: str
    backbone: Callable[[nn.Module], nn.Module] | None = None
    notes: str = ""
    timed: dict[str, nn.Module] | None = None
    """The models to time instead of the vanilla, expedited and ideal ones (a variant: autocast, compiled)."""


def paired(vanilla: nn.Module, expedited: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``vanilla`` and ``expedited`` in eval mode, the expedited model holding the vanilla one's very weight tensors."""
    expedited.load_state_dict(vanilla.state_dict(), assign=True)
    return vanilla.eval(), expedited.eval()
