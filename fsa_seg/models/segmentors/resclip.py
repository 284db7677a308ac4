"""ResCLIP (Yang et al., CVPR 2025): "ResCLIP: Residual Attention for Training-free Dense
Vision-language Inference", reproducing the official code (yvhangyang/ResCLIP @0e085f7) with its
default host, NACLIP.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor

from ..plugins.base import attend
from .base import TrainingFreeSegmentor, upsample_bilinear
from .last_block import official_neighbourhood
from .semantic_feedback import feedback_matrix, patch_mode

# The first segmentation's refinement inside SFR, hard-wired in the official code.
SFR_REFINE = dict(type='PAMR', steps=10, dilations=(8, 16))


@MODELS.register_module()
class ResCLIP(TrainingFreeSegmentor):
    """ResCLIP over NACLIP: residual cross-correlation self-attention (RCS) and semantic feedback
    refinement (SFR) in CLIP's last block.

    Per crop, the last block runs on ``ln_1`` of the trunk output without residual or FFN (NACLIP,
    the host of the official configs: ``arch='wo_resi'``, ``attn_strategy='resclip'``), with
    kk = k kᵀ·d^-½ per head and Ω NACLIP's Gaussian neighbourhood (σ = ``gaussian_std``):

    1. RCS: R = the mean of the q-k softmax attentions of the trunk blocks ``rcs_layers``
       (per head, class token included);
    2. SFR pass: A₁ = τ_r((1 − λ_r)·softmax(kk + Ω) + λ_r·R); logits cos(head(A₁·V), text) are
       upsampled to the crop, refined by PAMR on the crop (``sfr_refine``), turned into pixel
       labels (argmax over the *names* of softmax(logit_scale·logits); below ``temp_thd`` →
       name 0) and patch labels (each patch's mode), then into the SFR matrix
       (:func:`~.semantic_feedback.feedback_matrix`);
    3. final attention A = τ_r((1 − λ_r)·softmax(τ_s((1 − λ_s)·kk + λ_s·SFR16) + Ω) + λ_r·R),
       SFR16 = fp16(SFR / max SFR); features = head(A·V).

    SFR enters before the softmax, in logit space; RCS after it, in probability space. What the
    official code hard-wires or cannot switch is explicit here: ``use_rcs`` and ``use_sfr``
    (the official flags are stored as 1-tuples, always true: both always on), ``rcs_layers``,
    ``sfr_refine`` (the official code silently skips that PAMR when it raises, e.g. out of
    memory or in float64 on CPU: ``sfr_refine=None``) and ``delete_same_entity`` (off by
    default in the official constructor, on in all its configs: on here).

    Reproduced quirks of the official code, kept for exactness:

    * RCS uses blocks 5–8 (0-based) whatever the depth (ViT-L/14 too), and its mix is not
      renormalised: the rows of A sum to τ_r (2 in every official config);
    * the first segmentation's threshold sends pixels to the vocabulary's first *name*, which is
      not a background class in general ('sky' in VOC21, 'aeroplane' in VOC20);
    * the patch mode breaks ties towards the smallest label; pixels past the last whole patch are
      ignored;
    * the same-entity path check examines only the first s_ij/S of the segment from i to j (see
      :func:`~.semantic_feedback.same_entity_paths`);
    * the SFR blur is 1-D along the flattened row-major patch index, not 2-D;
    * Ω and the SFR matrix are computed in float32, SFR is divided by its maximum and cast to
      float16, and λ_s·SFR16 stays a float16 tensor; the SFR pass's PAMR runs in at least float32
      (the official float32 image), its result cast back to the model's dtype;
    * crops and whole images are not padded: the patch embedding drops the pixels past the last
      whole patch and logits are upsampled to the full size; an image smaller than the crop is
      one smaller crop.

    FSA, if given as ``plugin``, acts on the final attention A (per head, after RCS and SFR: the
    order is RCS → SFR → FSA; the SFR pass stays FSA-free) and the last block's per-head values
    V, with the segmentor's :meth:`attention_logits` (raw text) as feedback; rows of A summing to
    τ_r are taken as ResCLIP defines them. As for every CLIP baseline, a plug-in that acts on
    patches (FSA) has the class token dropped before the last block: both passes then run on the
    patches, so the softmax support, R's patch block (whose rows then sum to less than 1), Ω and
    SFR have no class token, and ResCLIP + FSA differs from ResCLIP in that too (as NACLIP + FSA
    from NACLIP).

    Args:
        attn_rcs_weights: (τ_r, λ_r) of the RCS mix (no default, as in the official code).
        attn_sfr_weights: (τ_s, λ_s) of the SFR mix (no default).
        temp_thd: the first segmentation's probability threshold (no default).
        use_rcs, use_sfr: switch RCS / SFR (the official code runs both).
        rcs_layers: 0-based trunk blocks whose attentions RCS averages.
        gaussian_std: σ of Ω and of the SFR blur, in patches.
        delete_same_entity: decay same-label pairs whose path leaves the label.
        sfr_refine: config of the SFR pass's refinement (PAMR(10, (8, 16))), or None for none.
    """

    pad_crops = False

    def __init__(self, *args, attn_rcs_weights: Optional[Sequence[float]] = None,
                 attn_sfr_weights: Optional[Sequence[float]] = None,
                 temp_thd: Optional[float] = None, use_rcs: bool = True, use_sfr: bool = True,
                 rcs_layers: Sequence[int] = (5, 6, 7, 8), gaussian_std: float = 5.0,
                 delete_same_entity: bool = True, sfr_refine: Optional[dict] = SFR_REFINE,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.use_rcs, self.use_sfr = bool(use_rcs), bool(use_sfr)
        self.attn_rcs_weights = _pair('attn_rcs_weights', attn_rcs_weights, self.use_rcs,
                                      'use_rcs')
        self.attn_sfr_weights = _pair('attn_sfr_weights', attn_sfr_weights, self.use_sfr,
                                      'use_sfr')
        if self.use_sfr and temp_thd is None:
            raise ValueError('ResCLIP with use_sfr needs temp_thd (the first segmentation\'s '
                             'threshold; the official configs set 0.1-0.5 per benchmark)')
        self.temp_thd = None if temp_thd is None else float(temp_thd)
        depth = len(self.clip.visual.transformer.resblocks)
        self.rcs_layers = tuple(int(layer) for layer in rcs_layers)
        if self.use_rcs and (not self.rcs_layers
                             or not all(0 <= layer < depth - 1 for layer in self.rcs_layers)):
            raise ValueError(f'rcs_layers must be trunk blocks 0…{depth - 2} of this '
                             f'{depth}-block CLIP, got {self.rcs_layers}')
        self.gaussian_std = float(gaussian_std)
        self.delete_same_entity = bool(delete_same_entity)
        self.sfr_refine = MODELS.build(dict(sfr_refine)) if sfr_refine else None

    # ------------------------------------------------------------------ inference
    def encode_crops(self, crops: Tensor) -> Tensor:
        """Both passes of the last block on a batch of crops → (b, D, h, w) features."""
        patch_h, patch_w = self.clip.patch_size
        if crops.shape[-2] < patch_h or crops.shape[-1] < patch_w:
            raise ValueError(f'ResCLIP needs images of at least one {patch_h}x{patch_w} patch '
                             f'(crops are not padded), got {tuple(crops.shape[-2:])}')
        tokens, grid, intermediates = self.clip.forward_to_last_block(crops,
                                                                      return_intermediates=True)
        num_prefix = 1 if self.plugin_keeps_prefix else 0
        dropped = 1 - num_prefix                      # the class token, for patch plug-ins
        rcs = None
        if self.use_rcs:
            rcs = self.residual_attention(crops, intermediates)[..., dropped:, dropped:]
        _, keys, values = self.clip.qkv(tokens[:, dropped:])
        key_logits = keys @ keys.transpose(-1, -2) * keys.shape[-1] ** -0.5
        omega = self.neighbourhood(grid, num_prefix).to(key_logits)
        sfr = None
        if self.use_sfr:
            first = self.host_attention(key_logits, omega, rcs) @ values
            labels = self.pixel_labels(self.pixel_probabilities(
                self.feedback_logits(first, grid, num_prefix), crops))
            sfr = self.semantic_feedback(labels, num_prefix)
        attn = self.host_attention(key_logits, omega, rcs, sfr)
        attended = self.apply_plugin(attn, values, attend(attn, values), grid, num_prefix)
        features = self.clip.head(self.clip.out_proj(attended))[:, num_prefix:]
        return F.normalize(features, dim=-1).transpose(1, 2).unflatten(2, grid)

    # ------------------------------------------------------------------ RCS and the host
    def residual_attention(self, crops: Tensor, intermediates: List[Tensor]) -> Tensor:
        """R: the mean over ``rcs_layers`` of the trunk blocks' softmax(s·q kᵀ), (b, H, T, T)
        with the class token; ``intermediates`` are the blocks' outputs."""
        def block_input(layer: int) -> Tensor:
            return intermediates[layer - 1] if layer > 0 else self.clip.embed(crops)[0]

        return torch.stack([self.trunk_attention(block_input(layer), layer)
                            for layer in self.rcs_layers]).mean(dim=0)

    def trunk_attention(self, tokens: Tensor, layer: int) -> Tensor:
        """CLIP's own attention weights softmax((s·q) kᵀ) in trunk block ``layer``."""
        q, k, _ = self.clip.qkv(tokens, block=layer)
        return ((q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)).softmax(dim=-1)

    def neighbourhood(self, grid: Tuple[int, int], num_prefix: int) -> Tensor:
        """Ω (T, T) in float32 as the official code computes it, zero for prefix tokens."""
        omega = official_neighbourhood(grid, self.gaussian_std)
        return F.pad(omega, (num_prefix, 0, num_prefix, 0))

    def host_attention(self, key_logits: Tensor, omega: Tensor, rcs: Optional[Tensor],
                       sfr: Optional[Tensor] = None) -> Tensor:
        """NACLIP's softmax(kk + Ω), the SFR prior mixed into kk before it and R after it, in the
        official operations and dtypes."""
        logits = key_logits
        if sfr is not None:
            tau, lam = self.attn_sfr_weights
            # λ·SFR16 rounded in float16 as there, then in the model's dtype (exact but bf16)
            logits = tau * ((1 - lam) * logits + (lam * sfr).to(logits.dtype))
        attn = (logits + omega).softmax(dim=-1)
        if rcs is not None:
            tau, lam = self.attn_rcs_weights
            attn = tau * ((1 - lam) * attn + lam * rcs)
        return attn

    # ------------------------------------------------------------------ SFR
    def feedback_logits(self, attended: Tensor, grid: Tuple[int, int],
                        num_prefix: int) -> Tensor:
        """The SFR pass's cosine logits of the patches, (b, Q, h, w)."""
        logits = self.attention_logits(attended)[:, num_prefix:]
        return logits.transpose(1, 2).unflatten(2, grid)

    def pixel_probabilities(self, logits: Tensor, crops: Tensor) -> Tensor:
        """softmax over the names of logit_scale × the logits upsampled to the crop and refined
        by ``sfr_refine`` on it (in at least float32), (b, Q, H, W) in the model's dtype."""
        logits = upsample_bilinear(logits, crops.shape[-2:])
        if self.sfr_refine is not None:
            work_dtype = torch.promote_types(logits.dtype, torch.float32)
            logits = self.sfr_refine(crops, logits.to(work_dtype)).to(logits.dtype)
        return (logits * self.logit_scale).softmax(dim=1)

    def pixel_labels(self, probs: Tensor) -> Tensor:
        """Argmax over the names; pixels whose top probability is below ``temp_thd`` → 0."""
        labels = probs.argmax(dim=1)
        return labels.masked_fill(probs.amax(dim=1) < self.temp_thd, 0)

    def patch_labels(self, labels: Tensor) -> Tensor:
        """Each patch's most frequent pixel label (ties: the smallest), (b, h, w)."""
        return patch_mode(labels, self.clip.patch_size, self.num_queries)

    def semantic_feedback(self, labels: Tensor, num_prefix: int) -> Tensor:
        """SFR16 (b, 1, T, T): the SFR matrix of the pixel labels' patch labels over its maximum,
        float16, zero for prefix tokens."""
        sfr = feedback_matrix(self.patch_labels(labels), self.gaussian_std,
                              self.delete_same_entity)
        sfr = (sfr / sfr.amax(dim=(-2, -1), keepdim=True)).half()
        return F.pad(sfr, (num_prefix, 0, num_prefix, 0))[:, None]


def _pair(name: str, value: Optional[Sequence[float]], needed: bool, switch: str):
    """(τ, λ) of a config, checked; None where its module is off."""
    if value is None:
        if needed:
            raise ValueError(f'ResCLIP with {switch} needs {name}=(tau, lambda); the official '
                             'code has no default (its configs set them per benchmark)')
        return None
    if len(value) != 2:
        raise ValueError(f'{name} must be (tau, lambda), got {value!r}')
    return float(value[0]), float(value[1])
