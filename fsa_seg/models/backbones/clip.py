"""CLIP from upstream open_clip, split before the visual trunk's last block.

Baselines only change the last block, so this module runs the trunk up to it (any crop size, the
positional embeddings interpolated to the crop's token grid) and exposes what a baseline needs
of the last block and the output head. Nothing of open_clip is re-implemented.
"""
import hashlib
import os
from typing import Dict, List, Optional, Tuple

import open_clip
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor, nn

from ..weights import WeightsError, is_local_path, load_open_clip_checkpoint, require_weights

PRECISIONS = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16,
              'fp64': torch.float64}


def tag_uses_quick_gelu(model_name: str, tag: str) -> bool:
    """Whether open_clip's pretrained ``tag`` of ``model_name`` was trained with QuickGELU."""
    return bool(open_clip.get_pretrained_cfg(model_name, tag).get('quick_gelu', False))


def interpolate_pos_embed(pos_embed: Tensor, grid: Tuple[int, int],
                          native_grid: Tuple[int, int]) -> Tensor:
    """(1 + h0·w0, C) positional embeddings → (1 + h·w, C), bicubic over the patch grid.

    As DINO and the training-free segmentation codebases (SCLIP, ProxyCLIP, FSA) do it: by scale
    factors (h + 0.1) / h0 and (w + 0.1) / w0, which sample slightly differently from resizing to
    the size (h, w) and so keep our numbers comparable with theirs."""
    if tuple(grid) == tuple(native_grid):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:1], pos_embed[1:]
    patch_pos = patch_pos.reshape(1, *native_grid, -1).permute(0, 3, 1, 2)
    scale = tuple((size + 0.1) / native for size, native in zip(grid, native_grid))
    patch_pos = F.interpolate(patch_pos.float(), scale_factor=scale, mode='bicubic',
                              align_corners=False)
    patch_pos = patch_pos.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
    return torch.cat([cls_pos, patch_pos])


@MODELS.register_module()
class OpenCLIP(nn.Module):
    """An open_clip CLIP model, frozen, in eval mode.

    Args:
        model_name: open_clip architecture (``'ViT-B-16'``, ``'ViT-L-14'``, ``'ViT-H-14'``,
            ``'ViT-B-16-quickgelu'`` …).
        pretrained: an open_clip pretrained tag (``'openai'``, ``'laion2b_s32b_b79k'``) or a local
            checkpoint file. Required unless ``random_init``.
        arch: an explicit architecture (``embed_dim``, ``vision_cfg``, ``text_cfg``, as in
            open_clip's model configs) instead of ``model_name``: for custom or tiny CLIPs.
        quick_gelu: use QuickGELU (OpenAI's CLIPs were trained with it). None: as the pretrained
            tag says (False for local files, so say True for OpenAI weights from a file).
        precision: ``'fp32'`` (default), ``'fp16'``, ``'bf16'`` (GPU) or ``'fp64'``.
        random_init: build with random weights; the explicit opt-in for tests.
        cache_dir: where open_clip caches downloaded weights.
        trust_checkpoint: unpickle a local checkpoint fully (see :mod:`..weights`).
    """

    def __init__(self, model_name: str = 'ViT-B-16', pretrained: Optional[str] = None,
                 arch: Optional[dict] = None, quick_gelu: Optional[bool] = None,
                 precision: str = 'fp32', random_init: bool = False,
                 cache_dir: Optional[str] = None, trust_checkpoint: bool = False):
        super().__init__()
        self.trust_checkpoint = trust_checkpoint
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {sorted(PRECISIONS)}, got {precision!r}')
        self.model_name = 'custom' if arch is not None else model_name
        require_weights(f'CLIP {self.model_name}', pretrained, random_init)
        self.model = self._build(model_name, pretrained, arch, quick_gelu, cache_dir)
        self.model.to(PRECISIONS[precision]).eval().requires_grad_(False)
        if arch is not None:
            context_length = arch.get('text_cfg', {}).get('context_length', 77)
            self.tokenizer = open_clip.SimpleTokenizer(context_length=context_length)
        else:
            self.tokenizer = open_clip.get_tokenizer(model_name)
        self.weights_id = self._weights_id(pretrained)

    @classmethod
    def random_weights_config(cls, cfg: dict) -> dict:
        """``cfg`` built with random weights instead of its pretrained ones: how
        ``--random-weights`` (tests, benchmarks, pipeline checks) switches this component."""
        return dict({k: v for k, v in cfg.items() if k != 'pretrained'}, random_init=True)

    def _build(self, model_name, pretrained, arch, quick_gelu, cache_dir) -> nn.Module:
        if arch is not None:
            model = open_clip.CLIP(**arch, quick_gelu=bool(quick_gelu))
            if pretrained:
                self._load_file(model, pretrained, self.trust_checkpoint)
            return model
        if model_name not in open_clip.list_models():
            raise ValueError(f'unknown open_clip model {model_name!r}; see open_clip.list_models()')
        if not pretrained or is_local_path(pretrained):
            model = open_clip.create_model(model_name, pretrained=None, load_weights=False,
                                           pretrained_text=False,
                                           force_quick_gelu=bool(quick_gelu))
            if pretrained:
                self._load_file(model, pretrained, self.trust_checkpoint)
            return model
        known_tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in known_tags:
            raise WeightsError(f'{model_name}: unknown pretrained tag {pretrained!r} and no such '
                               f'file; known tags: {known_tags}')
        if quick_gelu is None:
            quick_gelu = tag_uses_quick_gelu(model_name, pretrained)
        try:
            return open_clip.create_model(model_name, pretrained=pretrained, cache_dir=cache_dir,
                                          force_quick_gelu=quick_gelu, require_pretrained=True)
        except Exception as error:
            raise WeightsError(
                f'could not load CLIP {model_name} weights {pretrained!r} through open_clip '
                f'({type(error).__name__}: {error}). Without network access, download the '
                f'checkpoint elsewhere and pass its local path as pretrained=...') from error

    @staticmethod
    def _load_file(model: nn.Module, path: str, trust: bool = False) -> None:
        if not os.path.isfile(path):
            raise WeightsError(f'CLIP checkpoint file not found: {path}')
        try:
            load_open_clip_checkpoint(model, path, trust)
        except Exception as error:  # mismatched keys or shapes, unreadable file: never partial
            raise WeightsError(f'CLIP checkpoint {path} does not fit the model '
                               f'({type(error).__name__}: {error})') from error

    def _weights_id(self, pretrained: Optional[str]) -> str:
        """What identifies the weights, for caching the text embeddings."""
        if pretrained and is_local_path(pretrained):
            stat = os.stat(pretrained)
            return f'file:{os.path.abspath(pretrained)}:{stat.st_size}:{stat.st_mtime_ns}'
        if pretrained:
            return f'tag:{pretrained}'
        digest = hashlib.sha1()
        for tensor in self.model.state_dict().values():
            digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        return f'random:{digest.hexdigest()}'

    # ------------------------------------------------------------------ visual trunk
    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def last_block(self) -> nn.Module:
        return self.visual.transformer.resblocks[-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    @property
    def patch_size(self) -> Tuple[int, int]:
        return tuple(self.visual.patch_size)

    @property
    def num_heads(self) -> int:
        return self.last_block.attn.num_heads

    def embed(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """Patch + class tokens with positional embeddings for the crop's grid, after ln_pre."""
        visual = self.visual
        x = visual.conv1(images.to(self.dtype))
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        pos_embed = interpolate_pos_embed(visual.positional_embedding, grid, visual.grid_size)
        x = x + pos_embed.to(x.dtype)
        return visual.ln_pre(x), grid

    def forward_to_last_block(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """Input tokens of the last block, (B, 1 + h·w, C), and the patch grid (h, w)."""
        x, grid = self.embed(images)
        for block in self.visual.transformer.resblocks[:-1]:
            x = block(x)
        return x, grid

    def qkv(self, tokens: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Per-head q, k, v of the last block, each (B, H, T, d), from its ln_1 and in_proj."""
        attn = self.last_block.attn
        q, k, v = F.linear(self.last_block.ln_1(tokens), attn.in_proj_weight,
                           attn.in_proj_bias).chunk(3, dim=-1)
        return tuple(t.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2) for t in (q, k, v))

    def out_proj(self, heads: Tensor) -> Tensor:
        """Per-head attention outputs (B, H, T, d) → out_proj of the merged heads, (B, T, C)."""
        return self.last_block.attn.out_proj(heads.transpose(1, 2).flatten(2))

    def head(self, tokens: Tensor) -> Tensor:
        """ln_post then proj: token features in the joint image-text space."""
        return self.visual.ln_post(tokens) @ self.visual.proj

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_text(self, texts: List[str]) -> Tensor:
        tokens = self.tokenizer(texts).to(self.visual.proj.device)
        return self.model.encode_text(tokens)

    def forward(self, images: Tensor) -> Tensor:  # the plain CLIP image embedding
        return self.model.encode_image(images.to(self.dtype))


def tiny_clip_arch(embed_dim: int = 32, width: int = 64, layers: int = 3, heads: int = 4,
                   image_size: int = 224, patch_size: int = 16) -> Dict:
    """A tiny CLIP architecture for tests and examples (random weights only)."""
    return dict(embed_dim=embed_dim,
                vision_cfg=dict(image_size=image_size, patch_size=patch_size, width=width,
                                layers=layers, head_width=width // heads, mlp_ratio=4.0),
                text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
