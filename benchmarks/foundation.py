"""CPU cost of foundation-model image features per tile (one sub-spot's patch), without any download.

Builds ViT-S/16 and ViT-B/16 of timm's shapes in plain torch (random weights: the cost of a network does not
depend on its weights) and a small CNN, and measures

1. the forward pass alone, per 224 px tile (fp32, ``torch.no_grad``, batch 8);
2. :func:`soscope.features.subspot_image_features` end to end with a
   :class:`~soscope.features.FoundationModel` (reading the image, cutting 112 µm patches at 0.5 µm per
   pixel, resampling, normalising, embedding, PCA) on a synthetic H&E section, per sub-spot.

Writes ``benchmarks/results/foundation.md``. Usage: ``python benchmarks/foundation.py [--threads 2]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

import soscope
from soscope.features import FoundationModel, subspot_image_features

OUT = Path(__file__).parent / "results" / "foundation.md"


class ViT(torch.nn.Module):
    """A ViT of timm's layout (patch embedding, class token, pre-norm blocks); returns the class token."""

    def __init__(self, dim: int, depth: int, heads: int, patch: int = 16, size: int = 224):
        super().__init__()
        self.embed = torch.nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = torch.nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = torch.nn.Parameter(torch.zeros(1, (size // patch) ** 2 + 1, dim))
        layer = torch.nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = torch.nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(dim)

    def forward(self, x):  # noqa: D102
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], dim=1) + self.pos
        return self.norm(self.blocks(t))[:, 0]


class SmallCNN(torch.nn.Module):
    """Four strided 3×3 convolutions (32-256 channels) and a global average: a light extractor."""

    def __init__(self):
        super().__init__()
        chans = [3, 32, 64, 128, 256]
        self.body = torch.nn.Sequential(
            *[
                m
                for a, b in zip(chans[:-1], chans[1:], strict=True)
                for m in (torch.nn.Conv2d(a, b, 3, stride=2, padding=1), torch.nn.ReLU())
            ]
        )

    def forward(self, x):  # noqa: D102
        return self.body(x).mean(dim=(2, 3))


def networks() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "small CNN (4 conv)": SmallCNN().eval(),
        "ViT-S/16 (22 M)": ViT(384, 12, 6).eval(),
        "ViT-B/16 (86 M)": ViT(768, 12, 12).eval(),
    }


def forward_cost(net: torch.nn.Module, batch: int = 8, repeats: int = 5) -> float:
    """Seconds per 224 px tile of the forward pass alone (the best of ``repeats`` batches)."""
    x = torch.rand(batch, 3, 224, 224)
    with torch.no_grad():
        net(x[:1])  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            net(x)
            best = min(best, time.perf_counter() - t)
    return best / batch


def end_to_end_cost(net: torch.nn.Module, n_spots: int) -> tuple[float, int]:
    """Seconds per sub-spot of subspot_image_features with a FoundationModel, and the sub-spots."""
    sdata = soscope.datasets.synthetic(n_spots=n_spots, n_features=10, k=7, image=True, microns_per_pixel=0.5)
    from soscope.geometry import make_subspots

    layout = make_subspots(sdata.shapes["spots"], "hex7")
    fm = FoundationModel(net, um_per_pixel=0.5, input_size=224, n_components=8, batch_size=8)
    t = time.perf_counter()
    f = subspot_image_features(sdata, "image", layout, "spots", coordinate_system="global", extractor=fm)
    dt = time.perf_counter() - t
    assert f.values.shape == (layout.n_subspots, 8)
    return dt / layout.n_subspots, layout.n_subspots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--spots", type=int, default=8, help="spots of the end-to-end section (x7 sub-spots)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = []
    for name, net in networks().items():
        fwd = forward_cost(net)
        e2e, m = end_to_end_cost(net, args.spots)
        rows.append((name, fwd, e2e, m))
        print(f"{name}: forward {fwd:.3f} s/tile, end to end {e2e:.3f} s/sub-spot ({m} sub-spots)")
    lines = [
        "# Foundation-model image features: CPU cost per tile",
        "",
        f"Machine: {os.cpu_count()} cores (shared with other jobs: load average {load:.1f} at the start), "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} torch "
        "threads, fp32, no GPU. Random weights (no download): the cost does not depend on them.",
        "",
        "| network | forward, s per 224 px tile (batch 8) | end to end, s per sub-spot | sub-spots |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {f:.3f} | {e:.3f} | {m} |" for n, f, e, m in rows]
    lines += [
        "",
        "End to end: `subspot_image_features` with `FoundationModel(net, um_per_pixel=0.5, input_size=224, "
        "n_components=8, batch_size=8)` on `soscope.datasets.synthetic(n_spots, k=7, microns_per_pixel=0.5)` "
        "(112 µm patches read from the 0.5 µm-per-pixel level, resampled, normalised, embedded, PCA). A "
        "Visium section (5,000 spots, 35,000 hex7 sub-spots) takes about 35,000 × the per-sub-spot time.",
    ]
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
