"""How a case is run: as built (float32 eager), in bfloat16, under CPU/GPU autocast, or compiled with inductor, so
that the speed-ups can be read next to what users already do to their models."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .case import BenchmarkCase
from .ideal import IdealModel

VARIANTS = ("float32", "bfloat16", "autocast-bf16", "compiled")
"""``float32``: eager as built; ``bfloat16``: weights and inputs in bfloat16; ``autocast-bf16``: float32 weights
under ``torch.autocast(dtype=torch.bfloat16)``; ``compiled``: ``torch.compile`` (inductor) of each model."""


class Autocast(nn.Module):
    """``model`` run under ``torch.autocast`` on its device."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, **inputs: torch.Tensor):
        device = next(self.model.parameters()).device
        with torch.autocast(device.type, dtype=self.dtype):
            return self.model(**inputs)


def apply_variant(case: BenchmarkCase, variant: str) -> BenchmarkCase:
    """``case`` set up for ``variant``: the models to time (vanilla, expedited, ideal) in ``case.timed``; FLOPs,
    overhead and memory are measured on the eager models (in the variant's dtype for ``bfloat16``)."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown benchmark variant {variant!r}; expected one of {VARIANTS}.")
    if variant == "bfloat16":
        for model in (case.vanilla, case.expedited):  # they share parameter tensors; buffers are converted too
            model.to(torch.bfloat16)
        inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in case.inputs.items()}
        return dataclasses.replace(case, name=f"{case.name} [bfloat16]", inputs=inputs)
    models = {"vanilla": case.vanilla, "expedited": case.expedited, "ideal": IdealModel(case.expedited)}
    if variant == "autocast-bf16":
        timed = {name: Autocast(model) for name, model in models.items()}
    elif variant == "compiled":
        timed = {name: torch.compile(model) for name, model in models.items()}
    else:
        return case
    return dataclasses.replace(case, name=f"{case.name} [{variant}]", timed=timed)
