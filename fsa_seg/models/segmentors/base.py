"""One inference implementation shared by every training-free segmentor.

A subclass only says how a batch of crops becomes dense, L2-normalised features in CLIP's joint
space (:meth:`TrainingFreeSegmentor.encode_crops`). Everything else lives here: the vocabulary
and its text embeddings, the attention plug-in, sliding-window or whole-image inference (the
windows of one image batched), and the post-processing shared by the training-free literature.
A segmentor whose crops need more than their pixels (CASS: a prior from the whole image, text
adapted per crop) overrides :meth:`~TrainingFreeSegmentor.image_context` and
:meth:`~TrainingFreeSegmentor.crop_logits`.
"""
import logging
import math
import numbers
from abc import abstractmethod
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.config import ConfigDict
from mmengine.logging import print_log
from mmengine.structures import PixelData
from mmseg.models.segmentors import BaseSegmentor
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from torch import Tensor, nn

from ...visualization import make_palette
from ..cuda_graphs import CropGraphs, model_state
from ..layout import with_aligned_row_count, with_padding
from ..plugins import AttentionPlugin, LogitsFn
from ..text import Vocabulary, cached_query_embeddings, load_vocabulary, resolve_templates

# CLIP's normalisation on 0..255 RGB values; mmseg loads BGR.
CLIP_PREPROCESSOR = dict(type='mmseg.PaddingSegDataPreProcessor',
                         mean=[122.771, 116.746, 104.094], std=[68.501, 66.632, 70.323],
                         bgr_to_rgb=True)
DEFAULT_TEST_CFG = dict(mode='slide', crop_size=(336, 336), stride=(112, 112))


def size_pair(value, what: str) -> Tuple[int, int]:
    """A size (whole pixels: ``336``, ``336.0``) or (height, width) → (height, width)."""
    pair = (value, value) if isinstance(value, numbers.Real) else value
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2
            and all(isinstance(v, numbers.Real) and float(v).is_integer() and v > 0
                    for v in pair)):
        raise ValueError(f'{what} must be a positive size or (height, width) in whole pixels, '
                         f'got {value!r}')
    return int(pair[0]), int(pair[1])


def sliding_window(crop_size, stride) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """``test_cfg``'s crop size and stride as (h, w) pairs; a stride larger than the crop is
    refused: windows would leave pixels no window covers (undefined probabilities)."""
    crop_size, stride = size_pair(crop_size, 'crop'), size_pair(stride, 'stride')
    if any(s > c for s, c in zip(stride, crop_size)):
        raise ValueError(f'stride {stride} is larger than the crop {crop_size}: windows would '
                         'leave gaps')
    return crop_size, stride


def checked_prob_thd(value) -> float:
    if not (isinstance(value, numbers.Real) and 0.0 <= value <= 1.0):
        raise ValueError(f'prob_thd must lie in [0, 1], got {value!r}')
    return float(value)


def window_starts(size: int, crop: int, stride: int) -> List[int]:
    """mmseg's slide_inference windows along one axis; one window if the image is smaller."""
    count = max(size - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride + crop, size) - crop, 0) for i in range(count)]


class TrainingFreeSegmentor(BaseSegmentor):
    """Base of every training-free CLIP segmentor.

    Args:
        clip: config of the CLIP model (default type ``OpenCLIP``).
        vocabulary: a bundled vocabulary name, a class-name file, or a list of classes.
        templates: template-set name or list of templates for the text embeddings.
        logit_scale: scale of the cosine logits before the softmax over queries.
        prob_thd: pixels whose top class probability is below it become class 0.
        test_cfg: ``dict(mode='slide', crop_size=(h, w), stride=(h, w))`` or ``dict(mode='whole')``.
        crop_batch_size: windows encoded together (from all images of a batch, unless
            :attr:`batch_across_images` is False).
        plugin: config of an attention plug-in (``dict(type='FSA', ...)``, an
            :class:`~fsa_seg.models.plugins.AttentionPlugin`) or None.
        post_refine: config of a refinement of the logits at the original size, guided by the
            image (``dict(type='PAMR', steps=10, dilations=(8, 16))``), or None.
        text_cache_dir: text-embedding cache folder; None for the default, False for none.
        cuda_graphs: on CUDA, replay each crop batch from a CUDA graph captured once per batch
            shape (:mod:`.cuda_graphs`): the same outputs, issued in one call instead of several
            hundred kernel launches from Python.
    """

    #: whether the windows of several images may share a forward pass (not where per-image
    #: state, such as CASS's seeded random draws, must follow the image order)
    batch_across_images = True
    #: the weighted components of the model config and their default types (the API and the
    #: tools find components through them: fsa_seg.models.components)
    component_types = {'clip': 'OpenCLIP'}
    #: whether crops of small images are zero-padded to the crop size and whole images to whole
    #: patches (the official codes of CASS and ResCLIP pad neither: the patch embedding drops
    #: the remainder)
    pad_crops = True
    #: whether crops may be replayed as CUDA graphs (not where a crop runs host code: CASS)
    supports_cuda_graphs = True
    #: the fewest patches (of CLIP's grid) a crop may have; checked against the slide crop when
    #: the model is built, so that a subclass that raises it sets what it reads before
    #: ``super().__init__``
    min_crop_patches = 1

    def __init__(self, clip: dict, vocabulary, templates='openai_imagenet',
                 logit_scale: float = 40.0, prob_thd: float = 0.0, test_cfg: Optional[dict] = None,
                 crop_batch_size: int = 16, plugin: Optional[dict] = None,
                 post_refine: Optional[dict] = None, text_cache_dir: Union[str, bool, None] = None,
                 cuda_graphs: bool = False, data_preprocessor: Optional[dict] = None, init_cfg=None,
                 pretrained: Optional[str] = None, train_cfg: Optional[dict] = None):
        # mmseg.apis.init_model sets `pretrained` and `train_cfg` to None on every model.
        if pretrained is not None or train_cfg is not None:
            raise ValueError(f'{type(self).__name__} is training-free and takes its weights from '
                             'clip.pretrained (and vfm.pretrained), not from `pretrained` or '
                             '`train_cfg`')
        super().__init__(data_preprocessor=data_preprocessor or CLIP_PREPROCESSOR,
                         init_cfg=init_cfg)
        self._graph_tensors = None  # parameters and buffers, listed once for the graphs' state
        self._warned_of_padding = False  # a crop beyond the image on both sides, said once
        self.clip = self.build_component('clip', clip)
        self.plugin = build_plugin(plugin)
        self.post_refine = MODELS.build(post_refine) if post_refine else None
        self.logit_scale = float(logit_scale)
        self.prob_thd = checked_prob_thd(prob_thd)
        self.test_cfg = ConfigDict(test_cfg or DEFAULT_TEST_CFG)
        if self.test_cfg.get('mode') not in ('slide', 'whole'):
            raise ValueError("test_cfg.mode must be 'slide' or 'whole', "
                             f'got {self.test_cfg.get("mode")!r}')
        if self.test_cfg.mode == 'slide':
            crop_size, stride = sliding_window(self.test_cfg.get('crop_size'),
                                               self.test_cfg.get('stride'))
            self.test_cfg.update(crop_size=crop_size, stride=stride)
            self.check_crop_size(crop_size)
        self.crop_batch_size = crop_batch_size
        self.text_cache_dir = text_cache_dir
        if cuda_graphs and not self.supports_cuda_graphs:
            raise ValueError(f'{type(self).__name__} runs host code per crop and cannot replay '
                             'crops as CUDA graphs: leave cuda_graphs off')
        # a graph per crop-batch size (k, 3, crop) for k ≤ crop_batch_size: batches of several
        # images end in batches of any size, and a graph keeps little (its grid logits)
        capacity = max(CropGraphs.DEFAULT_CAPACITY, crop_batch_size)
        self.crop_graphs = CropGraphs(capacity) if cuda_graphs else None
        # prob_thd belongs to the vocabulary the model is built with (class 0 its background)
        vocabulary = load_vocabulary(vocabulary)
        self._built_threshold = (vocabulary, self.prob_thd)
        self.set_vocabulary(vocabulary, templates)

    def build_component(self, key: str, cfg: dict) -> nn.Module:
        """A component from its config (the default type of ``key`` where it names none); a
        component other than CLIP runs in CLIP's precision (the model's, throughout)."""
        component = MODELS.build(dict(dict(type=self.component_types[key]), **cfg))
        return component if key == 'clip' else component.to(self.clip.dtype)

    # ------------------------------------------------------------------ vocabulary
    def set_vocabulary(self, vocabulary, templates=None,
                       prob_thd: Optional[float] = None) -> Vocabulary:
        """Change the classes at run time (open-vocabulary use); embeddings come from the cache
        when the same model, weights, templates and names were embedded before. ``prob_thd``:
        the threshold to use with them; None: the model's own with the vocabulary it was built
        with, else 0, as the threshold sends uncertain pixels to class 0, which in another
        vocabulary is whatever class comes first."""
        vocabulary = load_vocabulary(vocabulary)
        if prob_thd is None:
            built_vocabulary, built_prob_thd = self._built_threshold
            prob_thd = built_prob_thd if vocabulary == built_vocabulary else 0.0
        prob_thd = checked_prob_thd(prob_thd)
        templates = self.templates if templates is None else resolve_templates(templates)
        embeddings = cached_query_embeddings(self.clip, vocabulary.queries, templates,
                                             cache_dir=self.text_cache_dir)
        self.vocabulary, self.templates, self.prob_thd = vocabulary, templates, prob_thd
        self.set_query_embeddings(embeddings)
        return self.vocabulary

    @property
    def dataset_meta(self) -> dict:
        """mmseg's class names and palette (visualizers, inferencers): the vocabulary's."""
        names = tuple(self.vocabulary.class_names)
        return dict(classes=names, palette=make_palette(len(names)).tolist())

    @dataset_meta.setter
    def dataset_meta(self, meta) -> None:
        """Ignored: the vocabulary decides the classes (mmseg's inferencer, given no checkpoint,
        would otherwise name them after Cityscapes' 19)."""

    def set_query_embeddings(self, embeddings: Tensor) -> None:
        """Use given (Q, D) L2-normalised query embeddings, one row per vocabulary query."""
        if embeddings.shape[0] != self.num_queries:
            raise ValueError(f'{embeddings.shape[0]} embeddings for {self.num_queries} queries')
        device = self.clip.visual.proj.device
        # Buffers (not saved in checkpoints) so that model.to(device) moves them too; the
        # embeddings with zero rows up to a multiple of 8 (:attr:`query_embeddings` is a view)
        self.register_buffer('aligned_query_embeddings',
                             with_aligned_row_count(embeddings).to(device), persistent=False)
        self.register_buffer('query_to_class', torch.tensor(self.vocabulary.query_to_class,
                                                            device=device), persistent=False)
        self._graph_tensors = None
        if getattr(self, 'crop_graphs', None) is not None:
            self.crop_graphs.clear()  # graphs of the old embeddings: free their memory now

    @property
    def num_queries(self) -> int:
        """Q, the vocabulary's queries (a class may have several)."""
        return len(self.vocabulary.queries)

    @property
    def query_embeddings(self) -> Tensor:
        """The (Q, D) L2-normalised query embeddings, a row per vocabulary query."""
        return self.aligned_query_embeddings[:self.num_queries]

    @property
    def num_classes(self) -> int:
        return len(self.vocabulary)

    def check_crop_size(self, crop_size: Sequence[int]) -> None:
        """A ValueError unless crops of ``crop_size`` (h, w) hold :attr:`min_crop_patches` of
        CLIP's patches."""
        crop_size, patch = tuple(crop_size), tuple(self.clip.patch_size)
        rows, columns = (crop // size for crop, size in zip(crop_size, patch))
        if rows * columns == 0:
            raise ValueError(f'the crop {crop_size} is smaller than CLIP\'s patches {patch}: a '
                             'window would hold no patch')
        if rows * columns < self.min_crop_patches:
            side = max(patch) * smallest_square(self.min_crop_patches)
            raise ValueError(f'{type(self).__name__} needs crops of at least '
                             f'{self.min_crop_patches} of CLIP\'s {patch[0]}x{patch[1]} patches; '
                             f'the crop {crop_size} holds {rows}x{columns} (the smallest square '
                             f'crop: {side})')

    # ------------------------------------------------------------------ attention plug-in
    @property
    def plugin_keeps_prefix(self) -> bool:
        """Whether the last attention keeps its prefix (class) token: yes without a plug-in or
        with one that acts on all tokens; a plug-in that acts on patches has it dropped."""
        return self.plugin is None or self.plugin.tokens == 'all'

    def apply_plugin(self, attn: Optional[Tensor], values: Tensor, attended: Tensor,
                     grid: Tuple[int, int], num_prefix: int = 0,
                     logits_fn: Optional[LogitsFn] = None,
                     padding_holds_zeros: bool = False) -> Tensor:
        """The attention output after the plug-in (``attended`` itself without one); see
        :mod:`fsa_seg.models.plugins.base` for the contract. ``logits_fn`` defaults to
        :meth:`attention_logits`; ``padding_holds_zeros``: ``attn``'s rows are
        :func:`~fsa_seg.models.layout.padded_rows` with zeros in the padding, which a plug-in
        that reads padding then gets."""
        if self.plugin is None:
            return attended
        if padding_holds_zeros and attn is not None and self.plugin.reads_padding:
            attn = with_padding(attn)
        return self.plugin(attn, values, logits_fn or self.attention_logits, attended=attended,
                           grid=grid, num_prefix=num_prefix)

    def attention_logits(self, heads: Tensor) -> Tensor:
        """Per-head attention outputs of the last block (B, H, n, d) → cosine similarities
        (B, n, Q) of the attention output alone (out_proj, ln_post, proj): the plug-ins'
        ``logits_fn``."""
        features = self.clip.head(self.clip.out_proj(heads))
        # against the queries' zero-padded rows: the product's rows then start at multiples of
        # 16 bytes, which its fast GEMM kernels want on a GPU (Q = 171 of fp16: 342 bytes);
        # its first Q columns are the similarities (a view of padded rows). The features'
        # norms divide the product (Q' wide) rather than the features (D wide): F.normalize's
        # division, broadcast over D = 512 channels, took 6.4 µs of a batch of two crops on an
        # H100
        text = self.aligned_query_embeddings.to(features.dtype)
        norms = torch.linalg.vector_norm(features, dim=-1, keepdim=True).clamp_min(1e-12)
        return ((features @ text.t()) / norms)[..., :self.num_queries]

    # ------------------------------------------------------------------ features
    @abstractmethod
    def encode_crops(self, crops: Tensor) -> Tensor:
        """(b, 3, h, w) normalised crops → (b, D, gh, gw) L2-normalised dense features."""

    def cosine_logits(self, features: Tensor) -> Tensor:
        """(b, D, gh, gw) features → (b, Q, gh, gw) cosine similarities with the queries."""
        text = self.query_embeddings.to(features.dtype)
        return torch.einsum('bdhw,qd->bqhw', features, text)

    def image_context(self, image: Tensor) -> Any:
        """What every crop of one (3, H, W) image shares, computed once per image and passed to
        :meth:`crop_logits`; None here (crops need only their pixels)."""
        return None

    def crop_logits(self, crops: Tensor, context: Any = None) -> Tensor:
        """Cosine logits of crops, upsampled to the crop size."""
        return upsample_bilinear(self.grid_logits(crops), crops.shape[-2:])

    def grid_logits(self, crops: Tensor) -> Tensor:
        """Cosine logits of crops on the feature grid (b, Q, gh, gw): what a CUDA graph replays
        (a segmentor that overrides :meth:`crop_logits` sets :attr:`supports_cuda_graphs`
        False)."""
        return self.cosine_logits(self.encode_crops(crops))

    def replayed_crop_logits(self, crops: Tensor, context: Any = None) -> Tensor:
        """:meth:`crop_logits`, its grid logits replayed from CUDA graphs where ``cuda_graphs``
        is on (crops that need only their pixels). The upsampling runs outside the graph: a
        graph keeps its output, far smaller on the grid than at the crop size (4 crops of 336,
        Q = 171, fp32: 4.8 MB on a 42×42 grid, 309 MB at 336×336)."""
        if self.crop_graphs is None or context is not None:
            return self.crop_logits(crops, context)
        logits = self.crop_graphs(self.grid_logits, crops, self._graph_state())
        return upsample_bilinear(logits, crops.shape[-2:])

    def _graph_state(self) -> tuple:
        """What a captured crop graph depends on (:mod:`.cuda_graphs`). Listing the parameters
        walks every module (about 1 ms for ProxyCLIP): done once, again after ``_apply``."""
        if self._graph_tensors is None:
            self._graph_tensors = [*self.parameters(), *self.buffers()]
        return model_state(self._graph_tensors, tuple(map(id, self.children())),
                           id(self.plugin), repr(self.plugin))

    def _apply(self, fn, *args, **kwargs):
        self._graph_tensors = None  # .to(), .half(), .cuda() make new buffers
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ inference
    def windows(self, height: int, width: int) -> Tuple[List[Tuple[int, int, int, int]],
                                                        Tuple[int, int]]:
        """Window boxes (y1, y2, x1, x2) and the (padded) crop size for one image: mmseg's
        windows; a crop of an image smaller than the crop is padded to the crop size, and a whole
        image to whole patches, unless :attr:`pad_crops` is False (then neither is padded)."""
        if self.test_cfg.mode == 'whole':
            if not self.pad_crops:
                return [(0, height, 0, width)], (height, width)
            ph, pw = self.clip.patch_size
            return [(0, height, 0, width)], (-(-height // ph) * ph, -(-width // pw) * pw)
        (crop_h, crop_w), (stride_h, stride_w) = self.test_cfg.crop_size, self.test_cfg.stride
        boxes = [(y, min(y + crop_h, height), x, min(x + crop_w, width))
                 for y in window_starts(height, crop_h, stride_h)
                 for x in window_starts(width, crop_w, stride_w)]
        if not self.pad_crops:
            crop_h, crop_w = min(crop_h, height), min(crop_w, width)
        elif crop_h > height and crop_w > width:
            self._warn_of_padding((height, width), (crop_h, crop_w))
        return boxes, (crop_h, crop_w)

    def _warn_of_padding(self, image: Tuple[int, int], crop: Tuple[int, int]) -> None:
        """A crop larger than the image on both sides is padded whole (as the official codes
        pad it): with a crop far beyond the image, mostly padding, time and memory explode."""
        if self._warned_of_padding:
            return
        self._warned_of_padding = True
        ratio = crop[0] * crop[1] / (image[0] * image[1])
        print_log(f'WARNING: the crop {crop} is larger than the image {image} (as the test '
                  f'pipeline prepares it) on both sides: its window is padded to the crop, '
                  f'{ratio:.1f}x the image\'s pixels; a crop no larger than the images is faster '
                  '(said once)', logger='current', level=logging.WARNING)

    def inference_logits(self, image: Tensor) -> Tensor:
        """(3, H, W) image → (Q, H, W) cosine logits averaged over the windows covering it."""
        return self.batch_inference_logits([image])[0]

    def batch_inference_logits(self, images: Sequence[Tensor]) -> List[Tensor]:
        """:meth:`inference_logits` of several images, their windows encoded together (up to
        ``crop_batch_size`` crops at once; crops of one size and one image context per batch)."""
        jobs = []  # (image index, box, padded crop size, context key)
        contexts = [self.image_context(image) for image in images]
        for index, image in enumerate(images):
            boxes, crop_size = self.windows(*image.shape[-2:])
            shared = -1 if contexts[index] is None else index
            jobs += [(index, box, crop_size, shared) for box in boxes]
        totals = [None] * len(images)
        counts = [image.new_zeros((1, *image.shape[-2:])) for image in images]
        for chunk in _batches(jobs, self.crop_batch_size):
            (crop_h, crop_w), shared = chunk[0][2], chunk[0][3]
            # Crops smaller than the crop size (small images) are padded bottom/right.
            crops = torch.stack([F.pad(images[index][:, y1:y2, x1:x2],
                                       (0, crop_w - (x2 - x1), 0, crop_h - (y2 - y1)))
                                 for index, (y1, y2, x1, x2), _, _ in chunk])
            logits = self.replayed_crop_logits(crops, None if shared < 0 else contexts[shared])
            for (index, (y1, y2, x1, x2), _, _), crop_logit in zip(chunk, logits):
                if totals[index] is None:  # accumulate half-precision logits in fp32
                    totals[index] = logits.new_zeros(
                        (logits.shape[1], *images[index].shape[-2:]),
                        dtype=torch.promote_types(logits.dtype, torch.float32))
                totals[index][:, y1:y2, x1:x2] += crop_logit[:, :y2 - y1, :x2 - x1]
                counts[index][:, y1:y2, x1:x2] += 1
        return [total / count.to(total.dtype) for total, count in zip(totals, counts)]

    def refined_logits(self, logits: Tensor, image: Tensor, size: Sequence[int]) -> Tensor:
        """(Q, h, w) cosine logits of a (3, h, w) image → (Q, H, W) at the original size, refined
        by ``post_refine`` there (as NACLIP applies PAMR: to the resized raw logits, guided by
        the network input resized bilinearly to the same size); resized only without one."""
        logits = resize(logits, size)
        if self.post_refine is None:
            return logits
        guide = resize(image, size).to(logits.dtype)
        return self.post_refine(guide[None], logits[None])[0]

    def class_probabilities(self, logits: Tensor, size: Sequence[int]) -> Tensor:
        """(Q, h, w) cosine logits → (C, H, W): resize, scale, softmax over all queries, then the
        max over each class's synonyms."""
        logits = resize(logits, size)
        probs = (logits * self.logit_scale).softmax(dim=0)
        index = self.query_to_class.view(-1, 1, 1).expand_as(probs)
        by_class = probs.new_zeros((self.num_classes, *probs.shape[1:]))
        return by_class.scatter_reduce_(0, index, probs, 'amax', include_self=False)

    def label_map(self, probs: Tensor) -> Tensor:
        """Argmax over classes; pixels whose top probability is below ``prob_thd`` → class 0."""
        top_prob, labels = probs.max(dim=0, keepdim=True)
        return labels.masked_fill(top_prob < self.prob_thd, 0)

    @torch.no_grad()
    def predict(self, inputs: Tensor, data_samples: Optional[List[SegDataSample]] = None):
        """Fill ``seg_logits`` (class probabilities, C×H×W at the original size) and
        ``pred_sem_seg`` of each sample. Each image of the batch is processed on its own
        valid (unpadded) area, so batch size never changes a result."""
        if data_samples is None:
            data_samples = [SegDataSample(metainfo=dict(img_shape=inputs.shape[-2:],
                                                        ori_shape=inputs.shape[-2:]))
                            for _ in range(inputs.shape[0])]
        images = [_valid_area(image, sample) for image, sample in zip(inputs, data_samples)]
        if self.batch_across_images:
            all_logits = self.batch_inference_logits(images)
        else:
            all_logits = [self.inference_logits(image) for image in images]
        for image, logits, sample in zip(images, all_logits, data_samples):
            size = sample.metainfo['ori_shape'][:2]
            probs = self.class_probabilities(self.refined_logits(logits, image, size), size)
            sample.set_data(dict(seg_logits=PixelData(data=probs),
                                 pred_sem_seg=PixelData(data=self.label_map(probs))))
        self.report_undefined_pixels(data_samples)
        return data_samples

    def report_undefined_pixels(self, samples: Sequence[SegDataSample]) -> None:
        """Record in each sample's metainfo ``undefined_pixels``, the count of pixels whose class
        probabilities are not finite (their label means nothing), and warn once per batch that
        has some. One host synchronisation a batch, after all its crops."""
        if not samples:
            return
        counts = torch.stack([sample.seg_logits.data.isfinite().all(dim=0).logical_not().sum()
                              for sample in samples]).tolist()
        undefined = []
        for index, (sample, count) in enumerate(zip(samples, counts)):
            sample.set_metainfo(dict(undefined_pixels=count))
            if count:
                height, width = sample.seg_logits.shape
                name = sample.metainfo.get('img_path') or f'image {index + 1} of the batch'
                undefined.append(f'{count} of the {height * width} pixels of {name}')
        if undefined:
            cause = self.undefined_probabilities_cause()
            print_log(f'WARNING: class probabilities are not finite (NaN), and labels '
                      f'arbitrary, at {"; ".join(undefined)}' + (f'. {cause}' if cause else ''),
                      logger='current', level=logging.WARNING)

    def undefined_probabilities_cause(self) -> str:
        """Why this segmentor's probabilities can be undefined, for the warning ('' unknown)."""
        return ''

    # ------------------------------------------------------------------ mmseg's abstract API
    def extract_feat(self, inputs: Tensor) -> Tensor:
        return self.encode_crops(inputs)

    def encode_decode(self, inputs: Tensor, batch_data_samples=None) -> Tensor:
        return self.crop_logits(inputs)

    def _forward(self, inputs: Tensor, data_samples=None) -> Tensor:
        return self.crop_logits(inputs)

    def loss(self, inputs, data_samples):
        raise NotImplementedError(f'{type(self).__name__} is training-free: it has no loss')


def smallest_square(count: int) -> int:
    """The side of the smallest square of at least ``count`` cells: ⌈√count⌉."""
    return math.isqrt(count - 1) + 1


def _valid_area(image: Tensor, sample: SegDataSample) -> Tensor:
    """The image without the padding that batching added (mmseg pads to the batch's largest)."""
    height, width = sample.metainfo.get('img_shape', image.shape[-2:])[:2]
    return image[:, :height, :width]


def _batches(jobs: list, size: int):
    """Consecutive runs of at most ``size`` jobs that share a crop size and a context key."""
    chunk = []
    for job in jobs:
        if chunk and (len(chunk) == size or job[2:] != chunk[0][2:]):
            yield chunk
            chunk = []
        chunk.append(job)
    if chunk:
        yield chunk


def upsample_bilinear(maps: Tensor, size: Sequence[int]) -> Tensor:
    """(B, C, h, w) → (B, C, H, W), bilinear (align_corners=False). On CUDA in the channels-last
    layout: torch's kernel for contiguous maps gives each thread all C channels of one output
    pixel in turn (CLIP's 768 values onto DINO's 42×42 grid: 1764 threads), the channels-last
    kernel one thread per value (measured on an H100: two such upsamplings were a quarter of an fp16
    ProxyCLIP crop's GPU time). Elsewhere the maps go as they are, computed as before."""
    if maps.is_cuda:
        maps = maps.contiguous(memory_format=torch.channels_last)
    return F.interpolate(maps, size=tuple(size), mode='bilinear', align_corners=False)


def resize(maps: Tensor, size: Sequence[int]) -> Tensor:
    """(C, h, w) → (C, H, W), bilinear (align_corners=False); maps of that size as they are."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[None], size=tuple(size), mode='bilinear', align_corners=False)[0]


def build_plugin(cfg: Optional[dict]) -> Optional[AttentionPlugin]:
    """The plug-in of a config (None for none); anything but an attention plug-in is refused."""
    if not cfg:
        return None
    plugin = MODELS.build(cfg)
    if not isinstance(plugin, AttentionPlugin):
        raise TypeError(f'plugin {type(plugin).__name__} is not an attention plug-in '
                        '(fsa_seg.models.plugins.AttentionPlugin)')
    return plugin
