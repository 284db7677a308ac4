"""SC-CLIP (Bai et al., arXiv 2411.15869): "Self-Calibrated CLIP for Training-Free Open-Vocabulary
Segmentation", reproducing the official code (SuleBai/SC-CLIP @0417ba9).

The algorithm step by step, with the official code's quirks and the precision of each step:
``docs/specs/scclip.md``. The functions below are the steps; :class:`SCCLIP` composes them.
"""
from functools import reduce
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor

from ..plugins.base import attend
from .base import TrainingFreeSegmentor

# added to the row sums of the aggregation weights, as the official code does
AGGREGATION_EPS = 1e-6


class LocalOutliers(NamedTuple):
    """The outcome of :func:`local_outliers`."""
    mask: Tensor       # (b, N) bool: the outlier tokens
    scores: Tensor     # (b, N) local outlier factors, in the tokens' dtype
    threshold: Tensor  # (b, 1) float32 quantile of the scores


def squared_distances(tokens: Tensor) -> Tensor:
    """‖x_i − x_j‖² (b, N, N) of tokens (b, N, C), as the official code: the norm of each
    difference, then squared. ``torch.cdist`` without its matrix-product shortcut (whose
    cancellation loses small distances); half precision goes through float32 (cdist has no half
    kernels), the norm rounded to the tokens' dtype before squaring as the official code's is."""
    work = torch.promote_types(tokens.dtype, torch.float32)
    norms = torch.cdist(tokens.to(work), tokens.to(work),
                        compute_mode='donot_use_mm_for_euclid_dist')
    return norms.to(tokens.dtype).square()


def local_outliers(tokens: Tensor, neighbors: int = 30,
                   contamination: float = 0.05) -> LocalOutliers:
    """SC-CLIP's local outlier factor (official ``lof_pytorch``) of each of the tokens (b, N, C)
    among the tokens of its own crop, batched, without host synchronisation.

    Not the textbook LOF: distances are squared; the reach distance from i to a neighbour j is
    max(d_ij, k-distance of **i**) (the query's own k-distance, so it is always the k-distance of
    i); LOF_i = mean over i's k nearest neighbours j of lrd_j / lrd_i, lrd = k / mean reach
    distance. Outliers are the tokens whose LOF exceeds the (1 − contamination) quantile of the
    crop's scores, computed in float32 (linear interpolation) and compared in the scores' dtype
    (the official 0-dim float32 threshold does not promote the comparison).
    """
    num_tokens = tokens.shape[1]
    if num_tokens <= neighbors:
        raise ValueError(f"SC-CLIP's outlier detection needs more than {neighbors} patches per "
                         f'crop ({neighbors} neighbours each); this crop has {num_tokens}')
    knn_dist, knn_index = squared_distances(tokens).topk(neighbors + 1, dim=-1, largest=False)
    knn_dist, knn_index = knn_dist[..., 1:], knn_index[..., 1:]   # drop the token itself
    reach = torch.maximum(knn_dist, knn_dist[..., -1:])
    lrd = neighbors / torch.nan_to_num(reach.mean(dim=-1), nan=1e-6)               # (b, N)
    neighbour_lrd = lrd.gather(1, knn_index.flatten(1)).view_as(knn_index)
    scores = (neighbour_lrd / lrd[..., None]).mean(dim=-1)
    threshold = torch.quantile(scores.float(), 1 - contamination, dim=-1, keepdim=True)
    return LocalOutliers(scores > threshold.to(scores.dtype), scores, threshold)


def neighbour_sum(maps: Tensor) -> Tensor:
    """Sum over each position's 8 neighbours (its 3×3 window without the centre), zero outside
    the grid, of maps (b, C, h, w); shifted slices, so it stays in the maps' dtype (no TF32)."""
    height, width = maps.shape[-2:]
    padded = F.pad(maps, (1, 1, 1, 1))
    return sum(padded[..., 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
               for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)


def repair_outliers(tokens: Tensor, outliers: Tensor, grid: Tuple[int, int]) -> Tensor:
    """Patch tokens (b, N, C) with each outlier replaced by the mean of its non-outlier
    8-neighbours on the patch grid; an outlier without any keeps its value."""
    maps = tokens.transpose(1, 2).unflatten(2, grid)                          # (b, C, h, w)
    outliers = outliers.view(-1, 1, *grid)
    inliers = outliers.logical_not().to(tokens.dtype)
    count = neighbour_sum(inliers)
    mean = neighbour_sum(maps * inliers) / count.clamp_min(1)
    return torch.where(outliers & (count > 0), mean, maps).flatten(2).transpose(1, 2)


def cosine_similarities(tokens: Tensor) -> Tensor:
    """(b, N, C) → (b, N, N) cosine similarities."""
    unit = tokens / tokens.norm(dim=-1, keepdim=True)
    return unit @ unit.transpose(1, 2)


def aggregate(tokens: Tensor, weights: Tensor) -> Tensor:
    """Each token := the weighted mean of the tokens, rows of ``weights`` (b, N, N) normalised
    by their sums + 1e-6."""
    return (weights / (weights.sum(dim=-1, keepdim=True) + AGGREGATION_EPS)) @ tokens


def similarity_attention(similarity: Tensor, scale: float = 3.0) -> Tensor:
    """softmax(scale·(S − mean S)) over each row, entries below 0 masked (the diagonal never is);
    the mean over the whole crop's S (b, N, N). Returns (b, 1, N, N), shared by the heads."""
    logits = (similarity - similarity.mean(dim=(1, 2), keepdim=True)) * scale
    return logits.masked_fill(logits < 0, float('-inf')).softmax(dim=-1).unsqueeze(1)


@MODELS.register_module()
class SCCLIP(TrainingFreeSegmentor):
    """SC-CLIP: CLIP with its outlier tokens repaired, tokens aggregated by intermediate-layer
    similarities, and the last block's attention path applied twice (to the repaired tokens and
    to a sum of intermediate layers) and fused. No extra model, no extra parameter.

    Per crop, with f_i the output of block i (i = 0 … L−2, the trunk before the last block) and
    S_l the cosine similarities of f_l's patch tokens, ``[S]_β`` S with entries < β set to 0:

    1. outliers: the local outlier factor of f_{L−2}'s patch tokens (:func:`local_outliers`);
    2. repair: outliers := mean of their non-outlier 8-neighbours, in f_{L−2} and
       f_pre (:func:`repair_outliers`); S = S_pre of the repaired tokens;
    3. x = aggregate(repaired f_{L−2}, [S]_β) (:func:`aggregate`);
    4. main branch: the last block's attention path on x, no residual, no FFN, per head
       A = (softmax(3·(S − mean S)), negatives masked + softmax(k kᵀ·d^-½)) / 2, then
       out_proj(A·V) + res_cls·cls; aggregated with [S_post]_β;
    5. multi-level branch: the same on R = Σ f_i for i in range(multi_start_idx,
       multi_end_idx), + res_cls·R's cls, aggregated with [S_post]_β;
    6. features = ln_post(main + multi) @ proj.

    Quirks of the official code, kept for exactness:

    * the LOF variant (squared distances, the query's own k-distance as reach distance) and its
      threshold, a float32 quantile (see :func:`local_outliers`);
    * outlier positions on the grid are computed with the number of grid *rows* as divisor:
      right for the square crops of the official protocol only. On a non-square grid the official
      positions are wrong (or outside the grid, where the official code crashes), so
      ``official_outlier_positions=True`` refuses non-square crops; ``False`` uses the correct
      positions on any grid;
    * what is repaired: the penultimate output and f_pre only; not f_post, not the multi-level
      sum, not the cls token (the unrepaired cls of f_{L−2} is added back);
    * no class token in the last block; the multi branch adds back the *sum* of R's cls tokens;
    * the multi-level range excludes ``multi_end_idx`` (f_3 … f_9 for B/16: not f_10);
    * the fusion ``main + multi`` is in place, as the official ``x += re_feats``.

    Post-processing is the base's (softmax of ``logit_scale``·logits over the queries, max over
    each class's names, ``prob_thd``), plus SC-CLIP's area threshold (VOC21 only): see
    :meth:`class_probabilities`.

    Not the official code, where it never runs in the official protocol (slide 224/112 on images
    with a short side ≥ 336): crops of images smaller than the crop are padded (the official code
    runs them unpadded), whole-image inference is the base's (padded to whole patches; the
    official code drops the remainder), and the positional embedding of a non-square crop is
    resampled even when its token count equals the native one.

    FSA, if given as ``plugin``, acts in both last-block calls (main and multi-level), each on its
    own per-head attention A and values V over the patch tokens (there is no class token), with
    the segmentor's :meth:`attention_logits` (raw text) as feedback; its output replaces A·V
    before out_proj, and the cls term, the aggregations and the fusion follow unchanged.

    Args:
        pre_adjust_idx: block whose (repaired) similarities drive the first aggregation and the
            attention (8 for ViT-B/16, 16 for L/14).
        post_adjust_idx: block whose similarities drive the final aggregations (3; L/14: 6).
        multi_start_idx, multi_end_idx: the multi-level sum's blocks, end excluded (3, 10;
            L/14: 8, 19).
        res_cls: weight of the cls token added back after the last block (0.3; L/14: 0.1).
        beta: similarity threshold β of the aggregations (0.4).
        similarity_scale: scale of the mean-centred similarities in the attention (3.0).
        lof_neighbors, lof_contamination: the outlier detection's k (30) and outlier share
            (0.05).
        area_thd: None, or the area threshold of the post-processing (0.1 for VOC21).
        official_outlier_positions: see the quirks above.
    """

    def __init__(self, *args, pre_adjust_idx: int = 8, post_adjust_idx: int = 3,
                 multi_start_idx: int = 3, multi_end_idx: int = 10, res_cls: float = 0.3,
                 beta: float = 0.4, similarity_scale: float = 3.0, lof_neighbors: int = 30,
                 lof_contamination: float = 0.05, area_thd: Optional[float] = None,
                 official_outlier_positions: bool = True, **kwargs):
        self.lof_neighbors = int(lof_neighbors)  # super checks the crop with it
        super().__init__(*args, **kwargs)
        trunk_outputs = len(self.clip.visual.transformer.resblocks) - 1
        for name, index in (('pre_adjust_idx', pre_adjust_idx),
                            ('post_adjust_idx', post_adjust_idx)):
            if not 0 <= index < trunk_outputs:
                raise ValueError(f'{name} must index a block before the last (0 … '
                                 f'{trunk_outputs - 1} for this CLIP), got {index}')
        if not 0 <= multi_start_idx < multi_end_idx <= trunk_outputs:
            raise ValueError(f'need 0 <= multi_start_idx < multi_end_idx <= {trunk_outputs} '
                             f'(blocks before the last, end excluded), got {multi_start_idx}, '
                             f'{multi_end_idx}')
        if not 0 < lof_contamination < 1 or lof_neighbors < 1:
            raise ValueError('need lof_neighbors >= 1 and 0 < lof_contamination < 1, got '
                             f'{lof_neighbors}, {lof_contamination}')
        if area_thd is not None and not 0 <= area_thd < 1:
            raise ValueError(f'area_thd must be None or in [0, 1), got {area_thd}')
        self.pre_adjust_idx, self.post_adjust_idx = int(pre_adjust_idx), int(post_adjust_idx)
        self.multi_start_idx, self.multi_end_idx = int(multi_start_idx), int(multi_end_idx)
        self.res_cls, self.beta = float(res_cls), float(beta)
        self.similarity_scale = float(similarity_scale)
        self.lof_contamination = float(lof_contamination)
        self.area_thd = None if area_thd is None else float(area_thd)
        self.official_outlier_positions = bool(official_outlier_positions)

    @property
    def min_crop_patches(self) -> int:
        """The outlier detection takes each patch's ``lof_neighbors`` nearest others."""
        return self.lof_neighbors + 1

    # ------------------------------------------------------------------ features
    def encode_crops(self, crops: Tensor) -> Tensor:
        features, grid = self.crop_features(crops)
        features = features / features.norm(dim=-1, keepdim=True)
        return features.transpose(1, 2).unflatten(2, grid)

    def crop_features(self, crops: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """(b, 3, h, w) crops → SC-CLIP's patch features (b, N, D) before normalisation, and the
        patch grid."""
        tokens, grid, outputs = self.clip.forward_to_last_block(crops, return_intermediates=True)
        self._check_grid(grid)
        patches, cls = tokens[:, 1:], tokens[:, :1]
        outliers = local_outliers(patches, self.lof_neighbors, self.lof_contamination).mask
        similarity = cosine_similarities(
            repair_outliers(outputs[self.pre_adjust_idx][:, 1:], outliers, grid))
        x = aggregate(repair_outliers(patches, outliers, grid), self.thresholded(similarity))
        shared_attn = similarity_attention(similarity, self.similarity_scale)
        after = self.thresholded(cosine_similarities(outputs[self.post_adjust_idx][:, 1:]))
        main = aggregate(self.last_block_branch(x, shared_attn, grid) + self.res_cls * cls,
                         after)
        levels = reduce(torch.add, outputs[self.multi_start_idx:self.multi_end_idx])
        multi = aggregate(self.last_block_branch(levels[:, 1:], shared_attn, grid)
                          + self.res_cls * levels[:, :1], after)
        return self.clip.head(main.add_(multi)), grid

    def thresholded(self, similarity: Tensor) -> Tensor:
        """[S]_β: similarities below β set to 0."""
        return similarity.masked_fill(similarity < self.beta, 0)

    def last_block_branch(self, tokens: Tensor, shared_attn: Tensor,
                          grid: Tuple[int, int]) -> Tensor:
        """The last block's attention path on patch tokens (b, N, C), no residual, no FFN:
        out_proj(A·V), A = (shared_attn + softmax(s·k kᵀ)) / 2 per head; the plug-in, if any,
        replaces A·V."""
        _, keys, values = self.clip.qkv(tokens)
        attn = self.branch_attention(keys, shared_attn)
        attended = self.apply_plugin(attn, values, attend(attn, values), grid)
        return self.clip.out_proj(attended)

    @staticmethod
    def branch_attention(keys: Tensor, shared_attn: Tensor) -> Tensor:
        """(shared_attn + softmax(s·k kᵀ)) / 2, (b, H, N, N); rows sum to 1."""
        key_attn = (keys @ keys.transpose(-1, -2) * keys.shape[-1] ** -0.5).softmax(dim=-1)
        return (shared_attn + key_attn) / 2

    def _check_grid(self, grid: Tuple[int, int]) -> None:
        if self.official_outlier_positions and grid[0] != grid[1]:
            raise ValueError(f"SC-CLIP's official outlier positions are only right on square "
                             f'patch grids, this crop has {grid[0]}x{grid[1]}: use square '
                             'crops, or official_outlier_positions=False for the correct ones')

    # ------------------------------------------------------------------ post-processing
    def class_probabilities(self, logits: Tensor, size: Sequence[int]) -> Tensor:
        """The base's class probabilities; with ``area_thd``, classes c ≥ 1 that win at most
        ``area_thd`` of the pixels won by classes ≥ 1 get probability 0 (SC-CLIP's VOC21
        post-processing; class 0, the background, is never removed). ``prob_thd`` then applies
        to what is left, as in the official code."""
        probs = super().class_probabilities(logits, size)
        if self.area_thd is None:
            return probs
        return suppress_small_areas(probs, self.area_thd)


def suppress_small_areas(probs: Tensor, area_thd: float) -> Tensor:
    """Class probabilities (C, H, W) with the classes c ≥ 1 whose argmax area is at most
    ``area_thd`` × the area of all classes ≥ 1 set to 0 (in place); pixel counts in the
    probabilities' dtype, as the official code counts them."""
    winners = probs.argmax(dim=0).flatten()
    areas = probs.new_zeros(probs.shape[0]).index_add_(0, winners,
                                                       probs.new_ones(winners.shape))
    keep = areas[1:] > area_thd * areas[1:].sum()
    probs[1:] *= keep.to(probs.dtype)[:, None, None]
    return probs
