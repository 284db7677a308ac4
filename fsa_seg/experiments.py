"""The experiment matrix: every baseline × backbone (× proxy) × benchmark our configs cover, and
the rules that tie them (FSA's λ per backbone and proxy).

``tools/misc/generate_configs.py`` writes the leaf configs from it, and the tests read it, so
adding a benchmark or a backbone is one entry here plus its base config (and, for a benchmark,
its class names)::

    BENCHMARKS = (..., Benchmark('my_set'))         # + configs/_base_/datasets/my_set.py
    BACKBONES = (..., Backbone('vit-b32', 3.0))     # + configs/_base_/backbones/vit-b32.py

A leaf composes bases only: ``configs/_base_/models/<baseline>.py``, the backbone's, the proxy's
(ProxyCLIP), the benchmark's protocol (``datasets/<benchmark>.py``, or the baseline's own
``<baseline>/<benchmark>.py`` where its official code has its own per-benchmark settings), and
the runtime; its FSA twin adds ``plugins/fsa.py`` with λ from here.
"""
from dataclasses import dataclass, replace
from typing import Iterator, Optional, Sequence, Tuple


@dataclass(frozen=True)
class Backbone:
    """A CLIP (``configs/_base_/backbones/<name>.py``) and FSA's λ with it (FSA paper)."""
    name: str
    fsa_lamda: float


@dataclass(frozen=True)
class Proxy:
    """A ProxyCLIP vision foundation model (``configs/_base_/proxies/<name>.py``); ``fsa_lamda``
    replaces the backbone's λ with this proxy, for any backbone."""
    name: str
    fsa_lamda: Optional[float] = None


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: ``configs/_base_/datasets/<name>.py`` holds its dataset and our protocol."""
    name: str


@dataclass(frozen=True)
class Baseline:
    """A segmentor with configs in ``configs/<name>/`` from ``configs/_base_/models/<name>.py``.

    Attributes:
        backbones: the backbones its official code supports (None: every backbone).
        proxies: one leaf per proxy (ProxyCLIP).
        own_protocol: the benchmarks with the official code's own settings,
            ``configs/_base_/<name>/<benchmark>.py`` (each inheriting the benchmark's dataset
            base), which replace our protocol there; elsewhere our protocol.
        backbone_settings: ``configs/_base_/<name>/<backbone>.py`` holds per-backbone settings
            (``<name>_settings``, merged into the model).
        backbone_protocols: (backbone, benchmark) pairs with their own protocol base,
            ``configs/_base_/<name>/<benchmark>_<backbone>.py``.
    """
    name: str
    backbones: Optional[Tuple[str, ...]] = None
    proxies: bool = False
    own_protocol: Tuple[str, ...] = ()
    backbone_settings: bool = False
    backbone_protocols: Tuple[Tuple[str, str], ...] = ()


BACKBONES = (
    Backbone('vit-b16', fsa_lamda=3.0),
    Backbone('vit-l14', fsa_lamda=3.0),
    Backbone('vit-h14', fsa_lamda=2.3),
)
PROXIES = (
    Proxy('dino-b8'),
    Proxy('dino-b16'),
    Proxy('dinov2-b14'),
    Proxy('sam-b'),
    Proxy('mae-b16', fsa_lamda=4.5),
)
# The eight benchmarks of the FSA paper (and of every official baseline code).
PAPER_BENCHMARKS = ('voc21', 'context60', 'coco_object', 'voc20', 'context59', 'coco_stuff164k',
                    'cityscapes', 'ade20k')
BENCHMARKS = tuple(Benchmark(name) for name in PAPER_BENCHMARKS)
BASELINES = (
    Baseline('vanilla_clip'),
    Baseline('maskclip'),
    Baseline('sclip'),
    Baseline('clearclip'),
    Baseline('naclip'),
    Baseline('proxyclip', proxies=True),
    # The official code pairs DINO-B/8's 12 heads with CLIP ViT-B/16's, its only backbone.
    Baseline('cass', backbones=('vit-b16',), own_protocol=PAPER_BENCHMARKS),
    Baseline('resclip', backbones=('vit-b16', 'vit-l14'), own_protocol=PAPER_BENCHMARKS),
    Baseline('scclip', backbones=('vit-b16', 'vit-l14'), own_protocol=PAPER_BENCHMARKS,
             backbone_settings=True,
             backbone_protocols=(('vit-l14', 'voc21'), ('vit-l14', 'coco_object'))),
)


@dataclass(frozen=True)
class Leaf:
    """One leaf config: where it goes (relative to ``configs/``), its text, what it composes."""
    path: str
    text: str
    baseline: str
    backbone: str
    benchmark: str
    proxy: Optional[str] = None
    fsa_lamda: Optional[float] = None  # None: no FSA


@dataclass(frozen=True)
class ExperimentMatrix:
    """The registered entries; :data:`MATRIX` is ours (a test extends a copy with toy ones)."""
    baselines: Tuple[Baseline, ...] = BASELINES
    backbones: Tuple[Backbone, ...] = BACKBONES
    proxies: Tuple[Proxy, ...] = PROXIES
    benchmarks: Tuple[Benchmark, ...] = BENCHMARKS

    def extended(self, **entries: Sequence) -> 'ExperimentMatrix':
        """A copy with more entries, e.g. ``extended(benchmarks=[Benchmark('toy')])``."""
        return replace(self, **{key: tuple(getattr(self, key)) + tuple(value)
                                for key, value in entries.items()})

    def fsa_lamda(self, backbone: str, proxy: Optional[str] = None) -> float:
        """FSA's λ: the proxy's where it sets one, else the backbone's."""
        lamda = self._entry(self.proxies, proxy).fsa_lamda if proxy else None
        return lamda if lamda is not None else self._entry(self.backbones, backbone).fsa_lamda

    def leaves(self) -> Iterator[Leaf]:
        """Every leaf config, each followed by its FSA twin."""
        for baseline in self.baselines:
            backbones = baseline.backbones or tuple(b.name for b in self.backbones)
            proxies = [p.name for p in self.proxies] if baseline.proxies else [None]
            for backbone in backbones:
                for proxy in proxies:
                    for benchmark in (b.name for b in self.benchmarks):
                        yield from self._leaf_pair(baseline, backbone, proxy, benchmark)

    def _leaf_pair(self, baseline: Baseline, backbone: str, proxy: Optional[str],
                   benchmark: str) -> Iterator[Leaf]:
        parts = [p for p in (backbone, proxy, benchmark) if p]
        name = f'{baseline.name}_{"_".join(parts)}.py'
        fsa_name = f'{baseline.name}_fsa_{"_".join(parts)}.py'
        common = dict(baseline=baseline.name, backbone=backbone, benchmark=benchmark, proxy=proxy)
        yield Leaf(f'{baseline.name}/{name}', _leaf_text(baseline, backbone, proxy, benchmark),
                   **common)
        lamda = self.fsa_lamda(backbone, proxy)
        yield Leaf(f'{baseline.name}/{fsa_name}', _fsa_leaf_text(name, lamda),
                   fsa_lamda=lamda, **common)

    @staticmethod
    def _entry(entries, name):
        for entry in entries:
            if entry.name == name:
                return entry
        raise KeyError(f'{name!r} is not registered; known: {[e.name for e in entries]}')


MATRIX = ExperimentMatrix()


def _base_list(items: Sequence[str]) -> str:
    return '_base_ = [\n' + ''.join(f"    '{item}',\n" for item in items) + ']\n'


def _leaf_text(baseline: Baseline, backbone: str, proxy: Optional[str], benchmark: str) -> str:
    bases = [f'../_base_/models/{baseline.name}.py', f'../_base_/backbones/{backbone}.py']
    model = ['clip=_base_.clip']
    if proxy:
        bases.append(f'../_base_/proxies/{proxy}.py')
        model.append('vfm=_base_.vfm')
    if baseline.backbone_settings:
        bases.append(f'../_base_/{baseline.name}/{backbone}.py')
        model.append(f'**_base_.{baseline.name}_settings')
    if benchmark not in baseline.own_protocol:
        protocol = f'../_base_/datasets/{benchmark}.py'
    elif (backbone, benchmark) in baseline.backbone_protocols:
        protocol = f'../_base_/{baseline.name}/{benchmark}_{backbone}.py'
    else:
        protocol = f'../_base_/{baseline.name}/{benchmark}.py'
    bases += [protocol, '../_base_/default_runtime.py']
    return _base_list(bases) + f'model = dict({", ".join(model + ["**_base_.protocol"])})\n'


def _fsa_leaf_text(parent: str, lamda: float) -> str:
    return _base_list([f'./{parent}', '../_base_/plugins/fsa.py']) + \
        f'model = dict(plugin=dict(_base_.fsa, lamda={lamda}))\n'
