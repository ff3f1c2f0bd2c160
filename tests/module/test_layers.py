"""GraphAttention: permutation equivariance, isolated nodes, locality (a node sees its neighbours only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soscope.module import GraphAttention, ResidualBlock

N, DIM_IN, DIM_OUT = 30, 12, 16


def _random_graph(n: int, n_edges: int, seed: int) -> torch.Tensor:
    """Random symmetric graph, no self-loops, nodes 0 and 1 isolated."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(2, n, (n_edges,), generator=g)
    dst = torch.randint(2, n, (n_edges,), generator=g)
    keep = src != dst
    e = torch.stack([src[keep], dst[keep]])
    e = torch.unique(torch.cat([e, e.flip(0)], dim=1), dim=1)
    return e


@pytest.fixture
def layer():
    torch.manual_seed(0)
    return GraphAttention(DIM_IN, DIM_OUT, heads=4).double().eval()


@pytest.fixture
def h():
    return torch.randn(N, DIM_IN, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_output_shape_and_heads_check(layer, h):
    out = layer(h, _random_graph(N, 80, 0))
    assert out.shape == (N, DIM_OUT)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="divisible"):
        GraphAttention(4, 10, heads=4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_permutation_equivariance(layer, h, seed):
    edges = _random_graph(N, 90, seed)
    perm = torch.randperm(
        N, generator=torch.Generator().manual_seed(100 + seed)
    )  # new node j is old node perm[j]
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(N)  # old node i is new node inv[i]
    out = layer(h, edges)
    # relabel the edges and shuffle their order too: the result must not depend on either
    new_edges = inv[edges][:, torch.randperm(edges.shape[1], generator=torch.Generator().manual_seed(7))]
    out_perm = layer(h[perm], new_edges)
    torch.testing.assert_close(out_perm, out[perm], rtol=1e-10, atol=1e-10)


def test_isolated_nodes(layer, h):
    edges = _random_graph(N, 80, 3)
    assert not torch.isin(torch.tensor([0, 1]), edges).any()
    out = layer(h, edges)
    # an isolated node attends only to itself: value(h) + skip(h)
    want = layer.value(h[:2]) + layer.skip(h[:2])
    torch.testing.assert_close(out[:2], want, rtol=1e-10, atol=1e-10)
    # a graph with no edges at all
    empty = torch.zeros((2, 0), dtype=torch.long)
    torch.testing.assert_close(layer(h, empty), layer.value(h) + layer.skip(h), rtol=1e-10, atol=1e-10)


def test_output_depends_only_on_neighbours(layer, h):
    edges = _random_graph(N, 60, 4)
    out = layer(h, edges)
    for node in range(2, N):
        neigh = set(edges[0, edges[1] == node].tolist()) | {node}  # messages flow src -> dst
        others = [j for j in range(N) if j not in neigh]
        assert others, "graph too dense for the test"
        h2 = h.clone()
        h2[others] += (
            torch.randn(
                len(others), DIM_IN, generator=torch.Generator().manual_seed(node), dtype=torch.float64
            )
            * 5
        )
        torch.testing.assert_close(layer(h2, edges)[node], out[node], rtol=1e-12, atol=1e-12)
        # and changing a neighbour does change it
        if len(neigh) > 1:
            h3 = h.clone()
            j = sorted(neigh - {node})[0]
            h3[j] += 3.0
            assert not torch.allclose(layer(h3, edges)[node], out[node])


def test_direction_of_messages(layer, h):
    # one directed edge 2 -> 3: node 3 sees node 2, node 2 does not see node 3
    edges = torch.tensor([[2], [3]])
    out = layer(h, edges)
    h2 = h.clone()
    h2[3] += 4.0
    torch.testing.assert_close(layer(h2, edges)[2], out[2])
    h2 = h.clone()
    h2[2] += 4.0
    assert not torch.allclose(layer(h2, edges)[3], out[3])


def test_large_scores_are_stable(layer, h):
    # the scatter softmax subtracts the per-target maximum: huge inputs do not overflow
    out = layer(h * 1e3, _random_graph(N, 80, 5))
    assert torch.isfinite(out).all()


def test_residual_block_shape():
    torch.manual_seed(0)
    block = ResidualBlock(8).eval()
    x = torch.randn(5, 8)
    y = block(x)
    assert y.shape == x.shape
    # y = x + net(x): compared as sums (y - x loses the low bits of net(x) where |x| >> |net(x)|)
    np.testing.assert_allclose(y.detach().numpy(), (x + block.net(x)).detach().numpy(), rtol=1e-6, atol=1e-7)
