"""ResCLIP's semantic feedback refinement (SFR) prior, step by step as the official code
(yvhangyang/ResCLIP @0e085f7, ``clip/model.py``: ``create_patch_matrix``, ``check_path``,
``generate_attention_sfr``) computes it, in its dtypes (float32 throughout), batched over crops
and without host synchronisation.

From a first segmentation's patch labels: E_ij = [label_i = label_j]; same-label pairs whose path
leaves the label decay with their distance; each row is blurred with a 1-D Gaussian over the
flattened (row-major) patch index and normalised.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def patch_mode(labels: Tensor, patch: Tuple[int, int], num_labels: int) -> Tensor:
    """The most frequent pixel label of each patch, ties to the smallest label (what
    ``torch.mode`` returns on CPU, as the official code uses it); pixels past the last whole patch
    are ignored. (b, H, W) → (b, h, w)."""
    (patch_h, patch_w), (height, width) = patch, labels.shape[-2:]
    grid_h, grid_w = height // patch_h, width // patch_w
    blocks = labels[:, :grid_h * patch_h, :grid_w * patch_w]
    blocks = blocks.unflatten(1, (grid_h, patch_h)).unflatten(3, (grid_w, patch_w))
    blocks = blocks.permute(0, 1, 3, 2, 4).flatten(3)                      # (b, h, w, ph·pw)
    counts = blocks.new_zeros((*blocks.shape[:3], num_labels))
    counts.scatter_add_(-1, blocks, torch.ones_like(blocks))
    return counts.argmax(dim=-1)            # the first maximum: the smallest label


def chebyshev_steps(grid: Tuple[int, int], device=None) -> Tensor:
    """s_ij = max(|Δrow|, |Δcol|) between the patches of a grid, (N, N), row-major."""
    rows, cols = (torch.arange(size, device=device) for size in grid)
    dy = (rows[:, None] - rows[None, :]).abs()
    dx = (cols[:, None] - cols[None, :]).abs()
    steps = torch.maximum(dy[:, None, :, None], dx[None, :, None, :])     # (h, w, h, w)
    return steps.reshape(grid[0] * grid[1], -1)


def path_coordinates(size: int, t: Tensor) -> Tensor:
    """round(a·(1 − t_k) + b·t_k) in float32 (half to even) for every pair (a, b) of
    coordinates 0…size−1 along one axis: (size, size, K)."""
    coords = torch.arange(size, device=t.device, dtype=torch.float32)
    return (coords[:, None, None] * (1 - t) + coords[None, :, None] * t).round().long()


def same_entity_paths(patch_labels: Tensor) -> Tensor:
    """valid_ij: every checked point of the straight path from patch i to patch j has i's label.

    As the official ``check_path``: S + 1 points t_k = k/S (S the largest Chebyshev distance on
    the grid), rounded in float32; only the first s_ij + 1 of them are checked, so only the first
    s_ij/S of the segment (its end only when s_ij = S). (b, h, w) → (b, N, N) bool."""
    batch, height, width = patch_labels.shape
    span = max(height, width) - 1
    t = torch.linspace(0, 1, span + 1, dtype=torch.float32, device=patch_labels.device)
    ys, xs = path_coordinates(height, t), path_coordinates(width, t)
    steps = chebyshev_steps((height, width), patch_labels.device)
    start = patch_labels.reshape(batch, -1, 1)
    valid = torch.ones_like(steps, dtype=torch.bool).expand(batch, -1, -1).clone()
    for k in range(span + 1):
        # the label at the k-th point of every path (i, j): (b, h, w, h, w)
        point = patch_labels[:, ys[:, None, :, None, k], xs[None, :, None, :, k]]
        valid &= (point.reshape(batch, *steps.shape) == start) | (steps < k)
    return valid


def gaussian_kernel_1d(num_patches: int, std: float, device=None) -> Tensor:
    """The official normalised 1-D Gaussian, float32: size min(N, int(6σ + 1)) made odd."""
    size = min(num_patches, int(6 * std + 1))
    size += 1 - size % 2
    x = torch.arange(size, device=device, dtype=torch.float32) - size // 2
    kernel = torch.exp(-(x ** 2) / (2 * std ** 2))
    return kernel / kernel.sum()


def feedback_matrix(patch_labels: Tensor, std: float, same_entity: bool = True) -> Tensor:
    """ResCLIP's SFR matrix over patches (b, N, N), float32, from patch labels (b, h, w).

    E_ij = [label_i = label_j] (diagonal 1); with ``same_entity`` the pairs whose path is not
    valid (:func:`same_entity_paths`) are multiplied by exp(−s_ij/S); every row is convolved with
    :func:`gaussian_kernel_1d` along the flattened patch index (zero padding), clamped at 0 and
    divided by its sum + 1e-8."""
    batch, height, width = patch_labels.shape
    labels = patch_labels.reshape(batch, -1)
    num_patches = labels.shape[1]
    same = (labels[:, :, None] == labels[:, None, :]).float()
    if same_entity:
        steps = chebyshev_steps((height, width), labels.device)
        decay = torch.exp(-steps.float() / max(max(height, width) - 1, 1))
        same = torch.where(same_entity_paths(patch_labels), same, same * decay)
    kernel = gaussian_kernel_1d(num_patches, std, labels.device)
    blurred = F.conv1d(same.reshape(-1, 1, num_patches), kernel.view(1, 1, -1),
                       padding=kernel.numel() // 2).view(batch, num_patches, num_patches).relu()
    return blurred / (blurred.sum(dim=-1, keepdim=True) + 1e-8)
