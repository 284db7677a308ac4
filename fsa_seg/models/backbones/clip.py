"""CLIP from upstream open_clip, split before the visual trunk's last block.

Baselines only change the last block, so this module runs the trunk up to it (any crop size, the
positional embeddings interpolated to the crop's token grid) and exposes what a baseline needs
of the last block and the output head. Nothing of open_clip is re-implemented.
"""
import contextlib
import hashlib
import json
import logging
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import open_clip
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from open_clip.transformer import text_global_pool
from torch import Tensor, nn

from ..components import DownloadableWeights, WeightedComponent
from ..hub import hub_offline_if_unreachable, unreachable_hub_note
from ..pos_embed import DINO_RESAMPLING, ResampledCache
from ..weights import (
    CHECKPOINT_ERRORS,
    DOWNLOAD_ERRORS,
    WeightsError,
    is_local_path,
    load_open_clip_checkpoint,
    require_weights,
)

DEFAULT_MODEL_NAME = 'ViT-B-16'
# open_clip.create_model(load_weights=False) always logs this on the root logger, before we load
# the weights ourselves; random weights get our own louder warning instead.
OPEN_CLIP_RANDOM_INIT_NOTICE = 'Model initialized randomly.'


class _DropOpenClipRandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().endswith(OPEN_CLIP_RANDOM_INIT_NOTICE)


@contextlib.contextmanager
def _without_open_clip_random_init_notice():
    notice_filter, root = _DropOpenClipRandomInitNotice(), logging.getLogger()
    root.addFilter(notice_filter)
    try:
        yield
    finally:
        root.removeFilter(notice_filter)
PRECISIONS = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16,
              'fp64': torch.float64}


def tag_uses_quick_gelu(model_name: str, tag: str) -> bool:
    """Whether open_clip's pretrained ``tag`` of ``model_name`` was trained with QuickGELU."""
    return bool(open_clip.get_pretrained_cfg(model_name, tag).get('quick_gelu', False))


def interpolate_pos_embed(pos_embed: Tensor, grid: Tuple[int, int],
                          native_grid: Tuple[int, int]) -> Tensor:
    """(1 + h0·w0, C) positional embeddings → (1 + h·w, C), bicubic over the patch grid.

    As the training-free segmentation codebases (SCLIP, ClearCLIP, NACLIP, ProxyCLIP, CASS, FSA)
    do it: by DINO's scale factors (h + 0.1) / h0 and (w + 0.1) / w0, which sample slightly
    differently from resizing to the size (h, w), in the model's dtype (fp64 stays fp64), and
    only when the token count differs from the native one (their trunks test
    ``x.shape[1] != positional_embedding.shape[0]``): a grid of the native count is given the
    native embedding as it is, even a non-square one (e.g. 7×28 for 14×14, which they never
    meet: their crops are square)."""
    if grid[0] * grid[1] == native_grid[0] * native_grid[1]:
        return pos_embed
    patch_pos = DINO_RESAMPLING(pos_embed[1:], native_grid, grid)
    return torch.cat([pos_embed[:1], patch_pos])


@MODELS.register_module()
class OpenCLIP(WeightedComponent, nn.Module):
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

    weights_argument = 'clip_weights'
    takes_precision = True

    def __init__(self, model_name: str = DEFAULT_MODEL_NAME, pretrained: Optional[str] = None,
                 arch: Optional[dict] = None, quick_gelu: Optional[bool] = None,
                 precision: str = 'fp32', random_init: bool = False,
                 cache_dir: Optional[str] = None, trust_checkpoint: bool = False):
        super().__init__()
        self.trust_checkpoint = trust_checkpoint
        self._pos_embeds = ResampledCache()  # per grid and dtype, made once (slow on GPUs)
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
        config = arch if arch is not None else open_clip.get_model_config(model_name)
        self._text_config = {key: config.get(key) for key in ('embed_dim', 'text_cfg',
                                                               'custom_text')}
        self._text_truncatable = is_causal_clip_text(self.model)

    @classmethod
    def weights_file_config(cls, cfg: dict, path: str) -> dict:
        """A local checkpoint instead of the tag; QuickGELU stays what the tag implied (a file
        does not say)."""
        tag = cfg.get('pretrained')
        if cfg.get('quick_gelu') is None and cfg.get('arch') is None and tag \
                and not is_local_path(str(tag)):
            cfg = dict(cfg, quick_gelu=tag_uses_quick_gelu(
                cfg.get('model_name', DEFAULT_MODEL_NAME), tag))
        return super().weights_file_config(cfg, path)

    @classmethod
    def downloadable_weights(cls, cfg: dict) -> Optional[DownloadableWeights]:
        tag = cfg.get('pretrained')
        if not tag or cfg.get('random_init') or cfg.get('arch') is not None \
                or is_local_path(str(tag)):
            return None
        name = cfg.get('model_name', DEFAULT_MODEL_NAME)
        pretrained_cfg = open_clip.get_pretrained_cfg(name, tag) or {}
        sources = []
        if pretrained_cfg.get('hf_hub'):
            sources.append(f'https://huggingface.co/{pretrained_cfg["hf_hub"].strip("/")} '
                           '(open_clip_model.safetensors or open_clip_pytorch_model.bin)')
        if pretrained_cfg.get('url'):
            sources.append(pretrained_cfg['url'])
        return DownloadableWeights('CLIP', cls.weights_argument,
                                   f'open_clip {name}, pretrained={tag!r}', tuple(sources))

    def _build(self, model_name, pretrained, arch, quick_gelu, cache_dir) -> nn.Module:
        if arch is not None:
            model = open_clip.CLIP(**arch, quick_gelu=bool(quick_gelu))
            if pretrained:
                self._load_file(model, pretrained, self.trust_checkpoint)
            return model
        if model_name not in open_clip.list_models():
            raise ValueError(f'unknown open_clip model {model_name!r}; see open_clip.list_models()')
        if pretrained and not is_local_path(pretrained):
            if quick_gelu is None:
                quick_gelu = tag_uses_quick_gelu(model_name, pretrained)
            pretrained = self._download(model_name, pretrained, cache_dir)
        with _without_open_clip_random_init_notice():
            model = open_clip.create_model(model_name, pretrained=None, load_weights=False,
                                           pretrained_text=False,
                                           force_quick_gelu=bool(quick_gelu))
        if pretrained:
            self._load_file(model, pretrained, self.trust_checkpoint)
        return model

    @staticmethod
    def _download(model_name: str, tag: str, cache_dir: Optional[str]) -> str:
        """The checkpoint file of an open_clip tag, fetched into (or found in) its cache: what
        ``open_clip.create_model(pretrained=tag)`` loads, with download and load errors apart."""
        known_tags = open_clip.list_pretrained_tags_by_model(model_name)
        if tag not in known_tags:
            raise WeightsError(f'{model_name}: unknown pretrained tag {tag!r} and no such '
                               f'file; known tags: {known_tags}')
        with hub_offline_if_unreachable() as unreachable:
            try:
                return open_clip.download_pretrained(
                    open_clip.get_pretrained_cfg(model_name, tag), cache_dir=cache_dir)
            except (*DOWNLOAD_ERRORS, RuntimeError) as error:  # open_clip: checksum as RuntimeError
                raise WeightsError(
                    f'could not download CLIP {model_name} weights {tag!r} through open_clip '
                    f'({type(error).__name__}: {error}){unreachable_hub_note(unreachable)}. '
                    'Without network access, download the checkpoint elsewhere and pass its '
                    'local path as pretrained=...') from error

    @staticmethod
    def _load_file(model: nn.Module, path: str, trust: bool = False) -> None:
        if not os.path.isfile(path):
            raise WeightsError(f'CLIP checkpoint file not found: {path}')
        try:
            load_open_clip_checkpoint(model, path, trust)
        except WeightsError:  # refused as untrusted, or not a checkpoint: said precisely there
            raise
        except CHECKPOINT_ERRORS as error:  # mismatched keys or shapes, unreadable file
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
        source = visual.positional_embedding
        pos_embed = self._pos_embeds(source, (grid, x.dtype), lambda: interpolate_pos_embed(
            source, grid, visual.grid_size).to(x.dtype))
        x = x + pos_embed
        return visual.ln_pre(x), grid

    def forward_to_last_block(self, images: Tensor, return_intermediates: bool = False):
        """Input tokens of the last block, (B, 1 + h·w, C), and the patch grid (h, w); with
        ``return_intermediates`` also the list of every earlier block's output (the last of
        them is the first return value): methods that read intermediate layers use them."""
        x, grid = self.embed(images)
        outputs = []
        for block in self.visual.transformer.resblocks[:-1]:
            x = block(x)
            outputs.append(x)
        return (x, grid, outputs) if return_intermediates else (x, grid)

    def block(self, index: int = -1) -> nn.Module:
        """The ``index``-th residual block of the visual trunk (-1: the last)."""
        return self.visual.transformer.resblocks[index]

    def qkv(self, tokens: Tensor, block: int = -1) -> Tuple[Tensor, Tensor, Tensor]:
        """Per-head q, k, v of a block (default the last), each (B, H, T, d), from its ln_1 and
        in_proj applied to ``tokens`` (that block's input)."""
        layer = self.block(block)
        attn = layer.attn
        q, k, v = F.linear(layer.ln_1(tokens), attn.in_proj_weight,
                           attn.in_proj_bias).chunk(3, dim=-1)
        return tuple(t.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2) for t in (q, k, v))

    def out_proj(self, heads: Tensor, block: int = -1) -> Tensor:
        """Per-head attention outputs (B, H, T, d) → out_proj of the merged heads, (B, T, C),
        of a block (default the last)."""
        return self.block(block).attn.out_proj(heads.transpose(1, 2).flatten(2))

    def head(self, tokens: Tensor) -> Tensor:
        """ln_post then proj: token features in the joint image-text space."""
        return self.visual.ln_post(tokens) @ self.visual.proj

    # ------------------------------------------------------------------ text
    @property
    def text_id(self) -> str:
        """Everything the text embeddings depend on besides the prompts (the cache identity):
        the text tower's configuration, whether it runs QuickGELU (as built, whatever asked for
        it), its current dtype, the tokenizer and the weights."""
        tokenizer = dict(type=type(self.tokenizer).__name__,
                         context_length=getattr(self.tokenizer, 'context_length', None))
        quick_gelu = any(isinstance(module, open_clip.transformer.QuickGELU)
                         for module in self.model.modules())
        return json.dumps(dict(model=self.model_name, text=self._text_config,
                               quick_gelu=quick_gelu, dtype=str(self.model.logit_scale.dtype),
                               tokenizer=tokenizer, weights=self.weights_id),
                          sort_keys=True, default=str)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256,
                    progress: Optional[Callable[[int], None]] = None) -> Tensor:
        """(len(texts), D) text embeddings, not normalised, in the model's dtype.

        The texts are encoded longest first, in batches of similar length, each batch only up to
        its longest text: under the causal mask the pooled (end-of-text) token never attends to
        the padding after it, so this is open_clip's full-context ``encode_text`` at a fraction
        of the cost. ``progress(k)`` is called after each batch of ``k`` texts."""
        tokens = self.tokenizer(list(texts))  # on the CPU: lengths and order cost no host sync
        lengths = (pooled_token_index(self.model, tokens) + 1 if self._text_truncatable
                   else torch.full((len(tokens),), tokens.shape[1]))
        order = torch.argsort(lengths, descending=True, stable=True)
        device = self.model.logit_scale.device
        encoded = []
        for batch in order.split(batch_size):
            length = int(lengths[batch[0]])
            encoded.append(self._encode_tokens(tokens[batch, :length].to(device)))
            if progress is not None:
                progress(len(batch))
        encoded = torch.cat(encoded)
        in_order = torch.empty_like(encoded)
        in_order[order.to(device)] = encoded
        return in_order

    def _encode_tokens(self, tokens: Tensor) -> Tensor:
        """open_clip's ``CLIP.encode_text`` on tokens cut after the longest one's pooled token:
        positional embeddings and causal mask cut to match. Other text towers (CustomTextCLIP,
        bidirectional masks, pooling at a fixed position) get the full context."""
        model = self.model
        if not self._text_truncatable:
            return model.encode_text(tokens)
        length = tokens.shape[1]
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast_dtype)
        x = x + model.positional_embedding[:length].to(cast_dtype)
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = model.ln_final(x)
        x = text_global_pool(x, tokens, model.text_pool_type,
                             eos_token_id=getattr(model, 'text_eos_id', None))
        if isinstance(model.text_projection, nn.Linear):
            return model.text_projection(x)
        return x if model.text_projection is None else x @ model.text_projection

    def forward(self, images: Tensor) -> Tensor:  # the plain CLIP image embedding
        return self.model.encode_image(images.to(self.dtype))


def is_causal_clip_text(model: nn.Module) -> bool:
    """Whether ``model`` is open_clip's ``CLIP`` with a causal text mask and pooling at a token
    found from the ids (end of text): then its text embedding of a prompt depends only on the
    tokens up to that one."""
    mask = getattr(model, 'attn_mask', None)
    if (not isinstance(model, open_clip.CLIP) or mask is None
            or model.text_pool_type not in ('argmax', 'eos')):
        return False
    return torch.equal(mask, torch.full_like(mask, float('-inf')).triu(1))


def pooled_token_index(model: nn.Module, tokens: Tensor) -> Tensor:
    """Per row of ``tokens``, the position open_clip's ``text_global_pool`` takes the embedding
    from (argmax or eos pooling)."""
    if model.text_pool_type == 'argmax':
        return tokens.argmax(dim=-1)
    return (tokens == model.text_eos_id).int().argmax(dim=-1)


def tiny_clip_arch(embed_dim: int = 32, width: int = 64, layers: int = 3, heads: int = 4,
                   image_size: int = 224, patch_size: int = 16) -> Dict:
    """A tiny CLIP architecture for tests and examples (random weights only)."""
    return dict(embed_dim=embed_dim,
                vision_cfg=dict(image_size=image_size, patch_size=patch_size, width=width,
                                layers=layers, head_width=width // heads, mlp_ratio=4.0),
                text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
