"""The recording plots draw one line per layer / task and return the axes."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn

import gradcomp
from gradcomp.plot.record import cosine_over_steps, grad_norm_over_steps


def _recording() -> object:
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {"trunk": nn.Linear(3, 4), "heads": nn.ModuleDict({t: nn.Linear(4, 1) for t in "ab"})}
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(6, 3)
    with gradcomp.record(model, ["a", "b"], every=2) as rec:
        for _ in range(8):
            h = torch.tanh(model["trunk"](x))
            losses = {t: model["heads"][t](h).pow(2).mean() for t in "ab"}
            opt.zero_grad()
            rec.backward(losses)
            opt.step()
    return rec.to_dataset()


def test_plots_return_axes_with_lines() -> None:
    ds = _recording()
    fig, (ax1, ax2) = plt.subplots(1, 2)
    assert cosine_over_steps(ds, ax1) is ax1
    assert len(ax1.lines) == 2 + 1  # trunk, all, and the zero line
    assert grad_norm_over_steps(ds, ax2) is ax2
    assert len(ax2.lines) == 2
    with pytest.raises(ValueError, match="not in the recording"):
        cosine_over_steps(ds, ax1, pair=("a", "z"))
    plt.close(fig)
