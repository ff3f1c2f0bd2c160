"""Network building blocks: sparse graph attention over spots and residual MLP blocks."""

from __future__ import annotations

import math

import torch
from torch import nn


def add_self_loops(edge_index: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """Append one self-loop per node to a ``(2, E)`` edge index (so isolated spots still see themselves)."""
    loops = torch.arange(n_nodes, device=edge_index.device).repeat(2, 1)
    return torch.cat([edge_index, loops], dim=1)


class GraphAttention(nn.Module):
    """Multi-head attention over a sparse spot graph (TransformerConv-style), linear in the number of edges.

    Messages flow ``edge_index[0] → edge_index[1]``; attention weights are normalised per target node
    with a scatter softmax, so no dense N×N matrix is formed.
    """

    def __init__(self, dim_in: int, dim_out: int, heads: int = 4):
        super().__init__()
        if dim_out % heads:
            raise ValueError(f"dim_out={dim_out} must be divisible by heads={heads}")
        self.heads, self.dim_head = heads, dim_out // heads
        self.query = nn.Linear(dim_in, dim_out)
        self.key = nn.Linear(dim_in, dim_out)
        self.value = nn.Linear(dim_in, dim_out)
        self.skip = nn.Linear(dim_in, dim_out)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        n = h.shape[0]
        src, dst = add_self_loops(edge_index, n)
        q = self.query(h).view(n, self.heads, self.dim_head)
        k = self.key(h).view(n, self.heads, self.dim_head)
        v = self.value(h).view(n, self.heads, self.dim_head)
        score = (q[dst] * k[src]).sum(-1) / math.sqrt(self.dim_head)  # (E, heads)
        # scatter softmax over incoming edges of each target
        smax = torch.full((n, self.heads), -torch.inf, dtype=score.dtype, device=score.device)
        smax = smax.scatter_reduce(0, dst[:, None].expand_as(score), score, reduce="amax", include_self=True)
        w = torch.exp(score - smax[dst])
        denom = torch.zeros((n, self.heads), dtype=w.dtype, device=w.device).index_add_(0, dst, w)
        msg = w[..., None] * v[src]
        out = torch.zeros_like(v).index_add_(0, dst, msg) / denom[..., None]
        return out.reshape(n, -1) + self.skip(h)


class ResidualBlock(nn.Module):
    """``x + MLP(LayerNorm(x))``: the residual MLP block of the published decoder."""

    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


def mlp(dim_in: int, dim_hidden: int, dim_out: int, n_blocks: int = 2, dropout: float = 0.0) -> nn.Sequential:
    """Input projection, ``n_blocks`` residual blocks and an output projection."""
    return nn.Sequential(
        nn.Linear(dim_in, dim_hidden),
        *[ResidualBlock(dim_hidden, dropout) for _ in range(n_blocks)],
        nn.LayerNorm(dim_hidden),
        nn.GELU(),
        nn.Linear(dim_hidden, dim_out),
    )
