"""Tiny float models shared by tests (importable from any test module: pytest puts tests/ on sys.path)."""

from torch import nn


class ConvLinearNet(nn.Module):
    """One 3x3 conv and one linear: the smallest model with both quantizable layer types."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(self.conv(x).mean((2, 3)))
