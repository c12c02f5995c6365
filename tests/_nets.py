"""Small seeded float64 tanh MLPs shared by the curvature, Theorem 3 and lock tests."""
import math

import torch
from torch import nn

F64 = torch.float64


def mlp(gen, sizes, dropout=0.0):
    """Linear layers of ``sizes`` with tanh between: W ~ N(0, 1/fan_in), b ~ N(0, 0.01), drawn from ``gen``."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.utils.skip_init(nn.Linear, a, b, dtype=F64)  # no default init: the global RNG is not drawn
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=gen, dtype=F64) / math.sqrt(a))
            lin.bias.copy_(0.1 * torch.randn(b, generator=gen, dtype=F64))
        layers += [lin, nn.Tanh()] + ([nn.Dropout(dropout)] if dropout else []) if i < len(sizes) - 2 else [lin]
    return nn.Sequential(*layers)
