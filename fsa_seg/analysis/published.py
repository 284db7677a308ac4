"""Published mIoU numbers, and ours next to them.

``published_miou.csv`` (shipped with the package) holds every published mIoU we could read,
each with its source and whether it is the authors' own number or a later paper's quote. It is
the table of the README's model zoo (:func:`zoo_markdown`) and what ``fsa-seg compare`` puts
next to a results JSON of ``fsa-seg test`` (:func:`compare`). Columns: ``method`` (the
segmentor's registered type), ``variant`` (e.g. ``with PAMR``), ``backbone`` (open_clip model),
``proxy`` (ProxyCLIP's VFM preset, or ``none``), ``plugin`` (``none``: the published baselines),
``benchmark``, ``miou``, ``note``, ``source`` (address), ``source_detail``, ``kind``.
"""
import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

PUBLISHED_TABLE = Path(__file__).resolve().with_name('published_miou.csv')
BENCHMARKS = ('voc21', 'context60', 'coco_object', 'voc20', 'context59', 'coco_stuff164k',
              'cityscapes', 'ade20k')
BENCHMARK_TITLES = ('VOC21', 'PC60', 'Object', 'VOC20', 'PC59', 'Stuff', 'City', 'ADE')
METHOD_ORDER = ('MaskCLIP', 'SCLIP', 'ClearCLIP', 'NACLIP', 'ProxyCLIP')
BACKBONE_ORDER = ('ViT-B-16', 'ViT-L-14', 'ViT-H-14')


class ResultsFileError(ValueError):
    """A results file that cannot be compared (missing, not JSON, no settings)."""


@dataclass(frozen=True)
class Published:
    method: str
    variant: str
    backbone: str
    proxy: str
    plugin: str
    benchmark: str
    miou: float
    note: str
    source: str
    source_detail: str
    kind: str

    @property
    def label(self) -> str:
        return f'{self.method} ({self.variant})' if self.variant else self.method

    @property
    def own(self) -> bool:
        """The authors' own number (else a later paper's quote)."""
        return self.kind.startswith('own')

    @property
    def provenance(self) -> str:
        """'own' (the authors') or 'quoted by <repository>'."""
        if self.own:
            return 'own'
        return 'quoted by ' + self.kind.split('quoted-by-', 1)[-1]

    @property
    def miou_text(self) -> str:
        return f'{self.miou:.1f}' if round(self.miou * 10) == self.miou * 10 else f'{self.miou:.2f}'


def published_results(path: Path = PUBLISHED_TABLE) -> List[Published]:
    with open(path, encoding='utf-8', newline='') as handle:
        return [Published(**dict(row, miou=float(row['miou']))) for row in csv.DictReader(handle)]


# ---------------------------------------------------------------------------------- compare
@dataclass(frozen=True)
class Setting:
    """What a results JSON measured, in the table's terms."""
    method: str
    backbone: str
    proxy: str
    plugin: str
    benchmark: Optional[str]

    def describe(self) -> str:
        parts = [self.method + (f' + {self.plugin}' if self.plugin != 'none' else ''),
                 f'CLIP {self.backbone}']
        if self.proxy != 'none':
            parts.append(f'proxy {self.proxy}')
        return ', '.join(parts) + f', {self.benchmark or "a vocabulary of its own"}'


def setting_of(results: dict) -> Setting:
    """The method, backbone, proxy, plug-in and benchmark a results JSON was measured with
    (from the model config it records)."""
    model = results['settings']['model']
    clip, vfm, plugin = model.get('clip') or {}, model.get('vfm') or {}, model.get('plugin')
    vocabulary = model.get('vocabulary')
    return Setting(
        method=model['type'],
        backbone='custom' if clip.get('arch') else clip.get('model_name', 'ViT-B-16'),
        proxy=vfm.get('name', 'none') if vfm else 'none',
        plugin=plugin['type'] if plugin else 'none',
        benchmark=vocabulary if isinstance(vocabulary, str) and vocabulary in BENCHMARKS
        else None)


def matches(setting: Setting, table: Sequence[Published]) -> List[Published]:
    """Published numbers of the same method, backbone, proxy and benchmark (with or without a
    plug-in: the published baselines are what a plug-in is measured against)."""
    return [row for row in table
            if (row.method, row.backbone, row.proxy, row.benchmark)
            == (setting.method, setting.backbone, setting.proxy, setting.benchmark)]


def read_results(path: str) -> dict:
    """A results JSON of ``fsa-seg test --out``, with what :func:`compare` reads of it: a
    number as ``metrics.mIoU`` and the model config (its type at least) as ``settings.model``."""
    file = Path(path)
    if not file.is_file():
        raise ResultsFileError(f'{path}: no such file (write one with fsa-seg test CONFIG '
                               '--out results.json)')
    try:
        results = json.loads(file.read_text(encoding='utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsFileError(f'{path}: not a results JSON ({error})') from error
    if not isinstance(results, dict) or 'metrics' not in results \
            or not isinstance(results.get('settings'), dict) or 'model' not in results['settings']:
        raise ResultsFileError(f'{path}: not a results JSON of fsa-seg test (no metrics and '
                               'settings; files of older versions lack the settings)')
    _check_miou(path, results['metrics'])
    _check_model(path, results['settings']['model'])
    return results


def _check_miou(path: str, metrics) -> None:
    if not isinstance(metrics, dict):
        raise ResultsFileError(f'{path}: metrics is a {type(metrics).__name__}, not the metrics '
                               'by name that fsa-seg test writes')
    if 'mIoU' not in metrics:
        raise ResultsFileError(f'{path}: no mIoU among its metrics '
                               f'({", ".join(map(str, metrics)) or "none"}) to compare')
    miou = metrics['mIoU']
    if isinstance(miou, bool) or not isinstance(miou, (int, float)):
        raise ResultsFileError(f'{path}: its mIoU is {json.dumps(miou)}, not a number to compare')


def _check_model(path: str, model) -> None:
    """What :func:`setting_of` reads: the model's type, CLIP's and the VFM's configs (dicts,
    where given), the plug-in's type (where it has one)."""
    usable = _typed(model) and all(isinstance(model.get(key) or {}, dict)
                                   for key in ('clip', 'vfm')) \
        and (not model.get('plugin') or _typed(model['plugin']))
    if not usable:
        raise ResultsFileError(f'{path}: settings.model is not the model config of fsa-seg test '
                               '(the types of the model and its plug-in name what the published '
                               'numbers are looked up by)')


def _typed(node) -> bool:
    return isinstance(node, dict) and isinstance(node.get('type'), str)


def compare(path: str, table: Optional[Sequence[Published]] = None) -> str:
    """Our mIoU from a results JSON next to the published ones for its setting, as text."""
    results = read_results(path)
    setting = setting_of(results)
    ours = results['metrics'].get('mIoU')
    lines = [f'{path}: {setting.describe()}', f'  ours: mIoU {ours:.2f}'
             + _caveats(results)]
    rows = matches(setting, published_results() if table is None else table)
    if not rows:
        lines.append('  no published number for this setting in the table shipped with fsa-seg'
                     f' ({PUBLISHED_TABLE.name}; FSA\'s own tables are not in it)')
        return '\n'.join(lines)
    lines.append(f'  published ({len(rows)}):')
    width = max(len(row.label) for row in rows)
    for row in sorted(rows, key=lambda r: (not r.kind.startswith('own'), r.source)):
        delta = f'{ours - row.miou:+6.2f}'
        plugin = '' if row.plugin == 'none' else f' + {row.plugin}'
        note = f' [{row.note}]' if row.note else ''
        lines.append(f'    {row.label + plugin:<{width}}  {row.miou:6.2f}  ours {delta}  '
                     f'{row.provenance}: {row.source}{note}')
    return '\n'.join(lines)


def _caveats(results: dict) -> str:
    notes = []
    if results.get('random_weights'):
        notes.append('RANDOM WEIGHTS: not comparable')
    if results.get('complete') is False:
        notes.append('partial split: not comparable')
    if (results.get('bad_annotations') or {}).get('count'):
        notes.append(f'{results["bad_annotations"]["count"]} bad annotation(s) tolerated')
    return f'  ({"; ".join(notes)})' if notes else ''


# ---------------------------------------------------------------------------------- README
def zoo_markdown(table: Optional[Sequence[Published]] = None) -> str:
    """The README's table of published numbers: one row per method, backbone and source."""
    table = published_results() if table is None else table
    groups: Dict[tuple, Dict[str, Published]] = {}
    for row in table:
        key = (row.label, row.backbone, row.proxy, row.note, row.source, row.kind)
        groups.setdefault(key, {})[row.benchmark] = row

    def order(key):
        label, backbone, proxy, note, source, kind = key
        method = label.split(' ')[0]
        return (_index(METHOD_ORDER, method), _index(BACKBONE_ORDER, backbone), label,
                not kind.startswith('own'), source)

    lines = ['| method | backbone | ' + ' | '.join(BENCHMARK_TITLES) + ' | by | source |',
             '|' + '---|' * (len(BENCHMARKS) + 4)]
    for key in sorted(groups, key=order):
        label, backbone, proxy, note, source, kind = key
        rows = groups[key]
        first = next(iter(rows.values()))
        values = [rows[b].miou_text if b in rows else '—' for b in BENCHMARKS]
        method = label + (' + DINO-B/8' if proxy == 'dino_vitb8' else '')
        by = 'authors' if first.own else 'quoted'
        details = [first.source_detail] + [part for part in (
            kind.split('(', 1)[1].rstrip(')') if '(' in kind and not first.own else '', note)
            if part]
        lines.append(f'| {method} | {"/".join(backbone.rsplit("-", 1))} | '
                     + ' | '.join(values) + f' | {by} | [{_short(source)}]({source}): '
                     + '; '.join(details) + ' |')
    return '\n'.join(lines) + '\n'


def _index(order: Sequence[str], item: str) -> int:
    return order.index(item) if item in order else len(order)


def _short(url: str) -> str:
    """github.com/OWNER/REPO/... → OWNER/REPO."""
    parts = url.split('github.com/', 1)[-1].split('/')
    return f'{parts[0]}/{parts[1]}' if len(parts) > 1 else url
