"""CASS (Kim et al., CVPR 2025): "Distilling Spectral Graph for Object-Context Aware
Open-Vocabulary Semantic Segmentation", reproducing the official code (MICV-yonsei/CASS @228ecdd).
"""
from contextlib import contextmanager
from functools import partial
from typing import Any, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from PIL import Image
from torch import Tensor

from ..plugins.base import attend
from .base import TrainingFreeSegmentor, upsample_bilinear
from .last_block import official_neighbourhood
from .spectral import (
    adjust_text,
    distil_graphs,
    rescale_to_range,
    ward_clusters,
)

# CASS turns the CLIP-normalised crop back into an 8-bit image for DINO with ImageNet statistics,
# the last std mistyped (0.255 for 0.225), then normalises that image with the correct ones.
UNNORMALISE_MEAN = (0.485, 0.456, 0.406)
UNNORMALISE_STD = (0.229, 0.224, 0.255)
DINO_MEAN = (0.485, 0.456, 0.406)
DINO_STD = (0.229, 0.224, 0.225)


@MODELS.register_module()
class CASS(TrainingFreeSegmentor):
    """CASS: CLIP's last block with key-key attention distilled from DINO's key graphs, and text
    adapted per crop to the objects present.

    Per crop: the last block runs on ``ln_1`` of the trunk output without residual or FFN, class
    token dropped; the CLIP graph is ``k kᵀ·d^-½`` per head, the DINO graph the same from DINO's
    last-block keys (resized to the CLIP grid, rescaled to the range of CLIP's keys); heads are
    paired by a spectral matching cost and each CLIP graph is mixed with a rank-10 randomized SVD
    of its DINO partner (:func:`~.spectral.distil_graphs`); attention = softmax(mix + Ω), Ω
    NACLIP's Gaussian neighbourhood. Text: per Ward cluster of the queries, the one most similar
    to a global CLS embedding moves towards its two most similar patches
    (:func:`~.spectral.adjust_text`); logits = (1 − γ)·cos(features, text′) + γ·global
    similarity.

    What the official code decides from the dataset's *name* is explicit here:
    ``scale_singular_values`` (off for VOC20 and Cityscapes) and ``whole_image_global`` (the
    global CLS from the whole image, or from each crop itself: Cityscapes).

    Reproduced quirks of the official code, kept for exactness:

    * the DINO input is the crop un-normalised with ImageNet statistics whose last std is 0.255
      (not 0.225), truncated to uint8, resized to a square of side min(h, w) with PIL's bicubic
      filter (the identity for square crops; a whole image is squashed), then normalised with
      the correct statistics in float32 and cropped to whole patches;
    * the head pairing's index swap (see :func:`~.spectral.distil_graphs`);
    * sizes that are not a multiple of the patch are not padded: the patch embedding drops the
      remainder and logits are upsampled to the full size; whole-image mode is not padded either;
    * the Gaussian Ω and the distillation weight are computed in float32.

    The randomized SVD draws from the global RNG: for each image the segmentor seeds
    ``torch.manual_seed(svd_seed)`` inside ``torch.random.fork_rng`` (the caller's RNG state is
    kept) and draws per crop in slide order, per head in CLIP head order, as the official code
    after one seed; batch size never changes a result. ``svd_seed=None`` draws from the global RNG
    as it is.

    FSA, if given as ``plugin``, acts per crop between the text adjustment and the logits: the
    adjusted text comes from the features before FSA, FSA's feedback logits use it (without the
    global mix) on the per-head attention and values, and the output logits use it again.

    Args:
        vfm: the DINO model (``dict(type='TimmVFM', name='dino_vitb8')``); its width must equal
            CLIP's (its keys are split into CLIP's heads).
        global_semantics_weight: γ, weight of the global similarity in the logits.
        mean_vector_weight: α, weight of the patches' mean in the adjusted text.
        h_threshold: Ward-linkage cut of the query clustering.
        gaussian_std: σ of Ω, in patches.
        scale_singular_values: stretch the DINO graph's singular values.
        whole_image_global: global CLS from the whole image (else from the crop); whole-image
            inference always uses the image itself.
        svd_seed: seed of the randomized SVD per image, or None.
        k_eigen, scale_factor, svd_q, svd_niter, topk_patches: the official constants.
    """

    batch_across_images = False   # each image replays its own seeded SVD draws
    supports_cuda_graphs = False  # scipy assignment and clustering per crop
    component_types = dict(TrainingFreeSegmentor.component_types, vfm='TimmVFM')
    pad_crops = False

    def __init__(self, *args, vfm: dict, global_semantics_weight: float = 0.0,
                 mean_vector_weight: float = 0.0, h_threshold: float = 0.0,
                 gaussian_std: float = 5.0, scale_singular_values: bool = True,
                 whole_image_global: bool = True, svd_seed: Optional[int] = 0,
                 k_eigen: int = 20, scale_factor: float = 10.0, svd_q: int = 10,
                 svd_niter: int = 2, topk_patches: int = 2, **kwargs):
        self.h_threshold = float(h_threshold)   # set_vocabulary (in super) clusters with it
        self.svd_q, self.svd_niter = int(svd_q), int(svd_niter)  # super checks the crop with it
        super().__init__(*args, **kwargs)
        self.vfm = self.build_component('vfm', vfm)
        if self.vfm.model.embed_dim != self.clip.visual.transformer.width:
            raise ValueError(f'CASS splits DINO keys into CLIP heads: the DINO width '
                             f'{self.vfm.model.embed_dim} must equal CLIP\'s '
                             f'{self.clip.visual.transformer.width}')
        self.global_semantics_weight = float(global_semantics_weight)
        self.mean_vector_weight = float(mean_vector_weight)
        self.gaussian_std = float(gaussian_std)
        self.scale_singular_values = bool(scale_singular_values)
        self.whole_image_global = bool(whole_image_global)
        self.svd_seed = svd_seed
        self.k_eigen, self.scale_factor = int(k_eigen), float(scale_factor)
        self.topk_patches = int(topk_patches)

    # ------------------------------------------------------------------ text
    def set_query_embeddings(self, embeddings: Tensor) -> None:
        """Also re-cluster the queries (Ward), which the text adjustment works on."""
        super().set_query_embeddings(embeddings)
        clusters = torch.as_tensor(ward_clusters(embeddings, self.h_threshold),
                                   device=self.query_embeddings.device)
        self.register_buffer('query_clusters',
                             clusters[None, :] == torch.arange(int(clusters.max()) + 1,
                                                               device=clusters.device)[:, None],
                             persistent=False)                              # (K, Q) bool

    # ------------------------------------------------------------------ inference
    def inference_logits(self, image: Tensor) -> Tensor:
        with self._svd_rng(image.device):
            return super().inference_logits(image)

    @contextmanager
    def _svd_rng(self, device: torch.device):
        if self.svd_seed is None:
            yield
            return
        devices = list(range(torch.cuda.device_count())) if device.type == 'cuda' else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.svd_seed)
            yield

    def image_context(self, image: Tensor) -> Optional[Tensor]:
        """The whole image's global similarity (1, Q), when the crops take it from there."""
        if self.test_cfg.mode == 'whole' or not self.whole_image_global:
            return None
        tokens, _ = self.clip.forward_to_last_block(image[None])
        return self.global_similarity(tokens)

    def global_similarity(self, tokens: Tensor) -> Tensor:
        """cos(CLS embedding after the full last block, queries), (b, Q)."""
        cls = self.clip.head(self.clip.last_block(tokens)[:, 0])
        cls = cls / cls.norm(dim=-1, keepdim=True)
        return cls @ self.query_embeddings.to(cls.dtype).t()

    def crop_logits(self, crops: Tensor, context: Any = None) -> Tensor:
        tokens, grid = self.clip.forward_to_last_block(crops)
        global_sim = self.global_similarity(tokens) if context is None else context
        global_sim = global_sim.expand(len(crops), -1)
        _, keys, values = self.clip.qkv(tokens[:, 1:])
        dino_keys = self.dino_keys(crops, keys, grid)
        attn = self.distilled_attention(keys, dino_keys, grid)
        attended = attend(attn, values)
        features = self._features(attended)
        text = adjust_text(features, self.query_embeddings.to(features.dtype), global_sim,
                           self.query_clusters, self.mean_vector_weight, self.topk_patches)
        if self.plugin is not None:
            attended = self.apply_plugin(attn, values, attended, grid,
                                         logits_fn=partial(self._text_logits, text=text))
            features = self._features(attended)
        gamma = self.global_semantics_weight
        logits = (features @ text.transpose(1, 2)) * (1 - gamma) + global_sim[:, None] * gamma
        logits = logits.transpose(1, 2).unflatten(2, grid)
        return upsample_bilinear(logits, crops.shape[-2:])

    def encode_crops(self, crops: Tensor) -> Tensor:
        """Dense features of the distilled attention (before FSA and the text adjustment, which
        need the text; inference goes through :meth:`crop_logits`)."""
        tokens, grid = self.clip.forward_to_last_block(crops)
        _, keys, values = self.clip.qkv(tokens[:, 1:])
        attn = self.distilled_attention(keys, self.dino_keys(crops, keys, grid), grid)
        return self._features(attend(attn, values)).transpose(1, 2).unflatten(2, grid)

    def _features(self, attended: Tensor) -> Tensor:
        """(b, H, N, d) attention outputs → (b, N, D) L2-normalised patch features."""
        features = self.clip.head(self.clip.out_proj(attended))
        return features / features.norm(dim=-1, keepdim=True)

    def _text_logits(self, heads: Tensor, text: Tensor) -> Tensor:
        """FSA's feedback logits against the adjusted text of each crop, (b, n, Q)."""
        return self._features(heads) @ text.transpose(1, 2)

    @property
    def min_crop_patches(self) -> int:
        """A crop's key graphs take a rank-``svd_q`` SVD: at least that many patches."""
        return self.svd_q

    # ------------------------------------------------------------------ CASS attention
    def distilled_attention(self, keys: Tensor, dino_keys: Tensor,
                            grid: Tuple[int, int]) -> Tensor:
        """softmax(distilled key graphs + Ω), (b, H, N, N); crops one after another (the SVD
        draws follow slide order)."""
        if keys.shape[2] < self.min_crop_patches:
            raise ValueError(f'CASS needs at least {self.svd_q} patches per crop (its rank-'
                             f'{self.svd_q} SVD); this crop has {keys.shape[2]}')
        scale = keys.shape[-1] ** -0.5
        clip_graphs = keys @ keys.transpose(-1, -2) * scale
        dino_graphs = dino_keys @ dino_keys.transpose(-1, -2) * scale
        combined = torch.stack([
            distil_graphs(clip, dino, self.k_eigen, self.scale_factor, self.svd_q,
                          self.svd_niter, self.scale_singular_values)
            for clip, dino in zip(clip_graphs, dino_graphs)])
        return (combined + self.neighbourhood(grid).to(combined)).softmax(dim=-1)

    def neighbourhood(self, grid: Tuple[int, int]) -> Tensor:
        """Ω (N, N) in float32, as the official code computes it (its float32 ``exp`` and sums
        may differ by an ulp between CPUs: so may the official code's)."""
        return official_neighbourhood(grid, self.gaussian_std)

    def dino_keys(self, crops: Tensor, clip_keys: Tensor, grid: Tuple[int, int]) -> Tensor:
        """DINO's last-block keys of the patch tokens, split into CLIP's heads, bilinearly
        resized to the CLIP grid and min-max rescaled to the range of CLIP's keys, per crop:
        (b, H, N, d)."""
        images = self.dino_input(crops)                 # float32; the VFM casts to its dtype
        tokens, _ = self.vfm.last_block_input(images)
        block = self.vfm.model.blocks[-1]
        qkv = block.attn.qkv(block.norm1(tokens))
        batch, length, _ = qkv.shape
        heads = block.attn.num_heads
        keys = qkv.reshape(batch, length, 3, heads, -1)[:, self.vfm.model.num_prefix_tokens:, 1]
        dino_grid = (images.shape[-2] // self.vfm.patch_size[0],
                     images.shape[-1] // self.vfm.patch_size[1])
        _, clip_heads, _, head_dim = clip_keys.shape
        keys = keys.permute(0, 2, 3, 1).reshape(batch * clip_heads, head_dim, *dino_grid)
        keys = F.interpolate(keys, size=grid, mode='bilinear', align_corners=False)
        keys = keys.reshape(batch, clip_heads, head_dim, -1).transpose(2, 3)
        return torch.stack([rescale_to_range(dino, clip) for dino, clip in zip(keys, clip_keys)])

    def dino_input(self, crops: Tensor) -> Tensor:
        """The official DINO input of CLIP-normalised crops (see the class docstring): float32,
        normalised, cropped to whole patches."""
        pixels = dino_pixels(crops)
        images = pixels.float().div(255)
        images = ((images - images.new_tensor(DINO_MEAN)[:, None, None])
                  / images.new_tensor(DINO_STD)[:, None, None])
        side = pixels.shape[-1]
        patch_h, patch_w = self.vfm.patch_size
        return images[..., :side - side % patch_h, :side - side % patch_w]


def dino_pixels(crops: Tensor) -> Tensor:
    """CLIP-normalised crops (b, 3, h, w) → the 8-bit images CASS gives DINO, (b, 3, s, s) with
    s = min(h, w): un-normalised with the mistyped ImageNet statistics, truncated, squared."""
    mean = crops.new_tensor([-m / s for m, s in zip(UNNORMALISE_MEAN, UNNORMALISE_STD)])
    std = crops.new_tensor([1 / s for s in UNNORMALISE_STD])
    pixels = ((crops - mean[:, None, None]) / std[:, None, None]) * 255
    pixels = pixels.clamp(0, 255).to(torch.uint8)                    # truncation, as astype
    if pixels.shape[-2] == pixels.shape[-1]:
        return pixels
    side = min(pixels.shape[-2:])
    return torch.stack([_pil_square(crop, side) for crop in pixels])


def _pil_square(crop: Tensor, side: int) -> Tensor:
    """(3, h, w) uint8 → (3, side, side) uint8 through PIL's bicubic resize (the official
    ``Image.resize`` default, antialiased)."""
    image = Image.fromarray(crop.permute(1, 2, 0).cpu().numpy())
    resized = np.asarray(image.resize((side, side), Image.BICUBIC))
    return torch.from_numpy(resized.copy()).permute(2, 0, 1).to(crop.device)

