"""Small seeded float64 MLPs shared by the curvature tests."""
import math

import torch
from torch import nn

F64 = torch.float64

def mlp(gen, sizes, dropout=0.0):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b, dtype=F64)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=gen, dtype=F64) / math.sqrt(a))
            lin.bias.copy_(0.1 * torch.randn(b, generator=gen, dtype=F64))
        layers += [lin, nn.Tanh()] + ([nn.Dropout(dropout)] if dropout else []) if i < len(sizes) - 2 else [lin]
    return nn.Sequential(*layers)
