"""What a weighted model component (a CLIP, a vision foundation model) says about itself, so that
the API and the tools compose components without knowing any of them: which weights option it
takes, how its config switches to random weights, to a local weights file or to a precision,
and which pretrained weights it would download.

A segmentor names its components and their default types (:attr:`component_types` of
:class:`~fsa_seg.models.segmentors.base.TrainingFreeSegmentor`); :func:`model_components`
finds them in a model config through the registry.
"""
from dataclasses import dataclass
from typing import ClassVar, Iterator, Optional, Tuple


@dataclass(frozen=True)
class DownloadableWeights:
    """Pretrained weights that a component fetches by tag, and how to give them as a file."""
    component: str       # 'CLIP', 'VFM'
    argument: str        # the init_segmentor keyword (the command-line flag is its dashed form)
    description: str
    sources: Tuple[str, ...]

    @property
    def option(self) -> str:
        return '--' + self.argument.replace('_', '-')


class WeightedComponent:
    """Mixin of a component whose weights come from a pretrained tag or a local file."""

    #: the ``init_segmentor`` keyword (and, dashed, the command-line flag) of a local weights file
    weights_argument: ClassVar[str] = ''
    #: whether the component takes a ``precision`` (the others follow their segmentor's)
    takes_precision: ClassVar[bool] = False

    @classmethod
    def random_weights_config(cls, cfg: dict) -> dict:
        """``cfg`` built with random weights instead of its pretrained ones (tests, benchmarks,
        pipeline checks)."""
        return dict({k: v for k, v in cfg.items() if k != 'pretrained'}, random_init=True)

    @classmethod
    def weights_file_config(cls, cfg: dict, path: str) -> dict:
        """``cfg`` loading the local checkpoint ``path`` instead of its pretrained tag."""
        return dict({k: v for k, v in cfg.items() if k != 'random_init'}, pretrained=path)

    @classmethod
    def downloadable_weights(cls, cfg: dict) -> Optional[DownloadableWeights]:
        """The weights ``cfg`` would download (a pretrained tag), or None."""
        return None


def model_components(model_cfg: dict, segmentor_cls) -> Iterator[Tuple[str, type]]:
    """(key, class) of every weighted component of a segmentor's model config: the values whose
    ``type`` (or the segmentor's default type for that key) is a :class:`WeightedComponent`."""
    from mmseg.registry import MODELS
    defaults = getattr(segmentor_cls, 'component_types', {})
    for key, value in model_cfg.items():
        if not isinstance(value, dict):
            continue
        kind = value.get('type', defaults.get(key))
        cls = kind if isinstance(kind, type) else MODELS.get(kind) if isinstance(kind, str) \
            else None
        if isinstance(cls, type) and issubclass(cls, WeightedComponent):
            yield key, cls
