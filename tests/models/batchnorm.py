"""Test helper: give a network's BatchNorm layers non-trivial statistics and affine parameters.

Freshly built BN layers are the identity (mean 0, var 1, weight 1, bias 0), so a weight mapping
that swaps or drops BN keys would go unnoticed; after this, any mis-mapped BN key changes the output.
"""

from __future__ import annotations

import torch
from torch import nn


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics, weights and biases in every BatchNorm layer; returns the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(module.num_features, generator=generator) * 0.4 - 0.2)
    return model.eval()
