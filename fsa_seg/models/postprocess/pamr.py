"""PAMR, pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), as NACLIP implements it
(sinahmr/NACLIP @0cac3a6 ``pamr.py``; ResCLIP's copy is the same file).

Each pixel's mask becomes a convex combination of the masks of its 8 neighbours at each dilation
(borders clamped), weighted by a softmax over the neighbours of the image's local colour affinity;
the affinities are fixed and the propagation is repeated ``steps`` times. The official module
builds its shifts from one-hot 3×3 kernels and materialises every shifted mask at once,
(B, C, P, H, W); here the shifts are views of one replicate-padded tensor and the P terms are
accumulated one at a time, in the official order (the same sums, a P-th of the memory).
"""
import itertools
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor, nn

# The 3×3 window in the official kernels' (row-major) order; its 8 neighbours without the centre.
WINDOW = tuple(itertools.product((-1, 0, 1), repeat=2))
NEIGHBOURS = tuple(offset for offset in WINDOW if offset != (0, 0))


@MODELS.register_module()
class PAMR(nn.Module):
    """Refine dense logits with the image's local affinities.

    Any segmentor takes it as ``post_refine=dict(type='PAMR', steps=10, dilations=(8, 16))``
    (NACLIP's setting); the segmentor applies it to the raw cosine logits at the original image
    size, guided by the network input resized to that size.

    It computes in the dtype of the logits (the image is cast to it): float32 as the official
    module for fp32 and half-precision models (whose logits are accumulated in float32), float64
    for fp64 models. Batched (each image uses its own affinities), no host synchronisation.

    Args:
        steps: propagation steps (the official ``num_iter``).
        dilations: neighbour distances in pixels; 8 neighbours per dilation.
    """

    def __init__(self, steps: int = 10, dilations: Sequence[int] = (8, 16)):
        super().__init__()
        if steps < 0 or not dilations or any(int(d) < 1 for d in dilations):
            raise ValueError(f'PAMR needs steps >= 0 and dilations >= 1, got steps={steps}, '
                             f'dilations={tuple(dilations)}')
        self.steps = int(steps)
        self.dilations = tuple(int(d) for d in dilations)

    def extra_repr(self) -> str:
        return f'steps={self.steps}, dilations={self.dilations}'

    def forward(self, image: Tensor, logits: Tensor) -> Tensor:
        """image (B, K, H, W), logits (B, C, h, w) → refined logits (B, C, H, W), in the dtype of
        the logits; logits of another size are first resized bilinearly (align_corners=True)."""
        size = tuple(image.shape[-2:])
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size=size, mode='bilinear', align_corners=True)
        affinity = self.affinity(image.to(logits.dtype))
        offsets = self.neighbour_offsets()
        for _ in range(self.steps):
            neighbours = self._shifted_views(logits, offsets)
            refined = neighbours[0] * affinity[:, :, 0]
            for index in range(1, len(offsets)):
                refined += neighbours[index] * affinity[:, :, index]
            logits = refined
        return logits

    def neighbour_offsets(self) -> List[Tuple[int, int]]:
        """(Δy, Δx) of the P = 8·len(dilations) neighbours, in the official order."""
        return [(dy * d, dx * d) for d in self.dilations for dy, dx in NEIGHBOURS]

    def affinity(self, image: Tensor) -> Tensor:
        """Softmax over the P neighbours of −|x − x_p| / (1e-8 + 0.1·σ), averaged over the image
        channels; σ is the unbiased standard deviation of each channel over the dilated 3×3
        windows (centre included once per dilation). (B, 1, P, H, W)."""
        window = [(dy * d, dx * d) for d in self.dilations for dy, dx in WINDOW]
        spread = torch.stack(self._shifted_views(image, window), dim=2).std(dim=2, keepdim=True)
        neighbours = self._shifted_views(image, self.neighbour_offsets())
        distance = torch.stack([(image - neighbour).abs() for neighbour in neighbours], dim=2)
        affinity = -distance / (1e-8 + 0.1 * spread)
        return affinity.mean(dim=1, keepdim=True).softmax(dim=2)

    def _shifted_views(self, x: Tensor, offsets: Sequence[Tuple[int, int]]) -> List[Tensor]:
        """x[..., clamp(i + Δy), clamp(j + Δx)] for each offset: views of one replicate-padded
        copy of x (B, C, H, W)."""
        pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
        height, width = x.shape[-2:]
        padded = F.pad(x, [pad] * 4, mode='replicate')
        return [padded[..., pad + dy:pad + dy + height, pad + dx:pad + dx + width]
                for dy, dx in offsets]

