"""The published numbers shipped with the package, the README's zoo and fsa-seg compare."""
import csv
import json
import re
from pathlib import Path

import pytest

from fsa_seg.analysis.published import (
    ResultsFileError,
    compare,
    published_results,
    zoo_markdown,
)

REPO = Path(__file__).resolve().parents[2]
BACKBONES = {'ViT-B/16': 'ViT-B-16', 'ViT-L/14': 'ViT-L-14', 'ViT-H/14': 'ViT-H-14'}


def test_every_row_as_read_from_its_source_is_shipped():
    with open(REPO / 'tests' / 'fixtures' / 'published_results.csv', newline='') as handle:
        raw = list(csv.DictReader(handle))
    shipped = published_results()
    assert len(shipped) == len(raw) == 173
    for original, row in zip(raw, shipped):
        assert row.miou == float(original['miou'])
        assert row.benchmark == original['benchmark']
        assert original['source'].startswith(row.source) and row.kind == original['kind']
        assert row.label == original['method']
        assert row.backbone == BACKBONES[original['backbone'].split(' (')[0]]
        assert (row.proxy == 'none') == (original['proxy'] == 'none')


def test_the_readme_zoo_is_the_shipped_table():
    readme = (REPO / 'README.md').read_text(encoding='utf-8')
    table = re.search(r'<!-- published-zoo[^>]*-->\n(.*?)<!-- /published-zoo -->', readme,
                      re.S).group(1)
    assert table == zoo_markdown()
    assert '| SCLIP | ViT-B/16 | 59.63 | 31.74 | 33.52 | 81.54 | 34.46 | 22.77 | 32.34 | 16.45 ' \
           '| authors | [wangf3014/SCLIP]' in table


def results_file(tmp_path, model, miou=60.0, **extra):
    path = tmp_path / 'results.json'
    record = dict(metrics=dict(mIoU=miou), complete=True, settings=dict(model=model))
    record.update(extra)
    path.write_text(json.dumps(record))
    return str(path)


def test_compare_puts_ours_next_to_the_published_numbers(tmp_path):
    path = results_file(tmp_path, dict(type='SCLIP', vocabulary='voc21', plugin=dict(
        type='FSA', lamda=3.0), clip=dict(type='OpenCLIP', model_name='ViT-B-16')))
    text = compare(path)
    assert text.splitlines()[0].endswith('SCLIP + FSA, CLIP ViT-B-16, voc21')
    assert 'ours: mIoU 60.00' in text
    assert re.search(r'SCLIP\s+59\.63\s+ours\s+\+0\.37\s+own: https://github.com/wangf3014', text)
    assert len(re.findall(r'59\.10\s+ours\s+\+0\.90\s+quoted by', text)) == 2  # two quotes
    assert '+0.37' in text.splitlines()[3]  # the authors' own number first


def test_compare_says_when_nothing_is_published_and_what_is_not_comparable(tmp_path):
    path = results_file(tmp_path, dict(type='ClearCLIP', vocabulary=['sky', 'tree'],
                                       clip=dict(arch={}, random_init=True)),
                        random_weights=True, complete=False)
    text = compare(path)
    assert 'RANDOM WEIGHTS: not comparable; partial split: not comparable' in text
    assert 'no published number for this setting' in text


def test_compare_refuses_what_is_not_a_results_file(tmp_path):
    with pytest.raises(ResultsFileError, match='no such file'):
        compare(str(tmp_path / 'nope.json'))
    (tmp_path / 'bad.json').write_text('{"metrics": ')
    with pytest.raises(ResultsFileError, match='bad.json: not a results JSON'):
        compare(str(tmp_path / 'bad.json'))
    (tmp_path / 'old.json').write_text('{"metrics": {"mIoU": 1}}')
    with pytest.raises(ResultsFileError, match='old.json: .* lack the settings'):
        compare(str(tmp_path / 'old.json'))


@pytest.mark.parametrize('record, message', [
    (dict(metrics=dict(aAcc=58.0), settings=dict(model=dict(type='SCLIP'))),
     r'r.json: no mIoU among its metrics \(aAcc\) to compare'),
    (dict(metrics=dict(mIoU=None), settings=dict(model=dict(type='SCLIP'))),
     r'r.json: its mIoU is null, not a number to compare'),
    (dict(metrics=dict(mIoU='60'), settings=dict(model=dict(type='SCLIP'))),
     r'r.json: its mIoU is "60", not a number'),
    (dict(metrics=[60.0], settings=dict(model=dict(type='SCLIP'))),
     r'r.json: metrics is a list, not the metrics by name'),
    (dict(metrics=dict(mIoU=60.0), settings=dict(model=dict(vocabulary='voc21'))),
     r'r.json: settings.model is not the model config of fsa-seg test'),
    (dict(metrics=dict(mIoU=60.0), settings=dict(model=dict(type='SCLIP', plugin=dict(lamda=3)))),
     r'r.json: settings.model is not the model config'),
    (dict(metrics=dict(mIoU=60.0), settings=dict(model=dict(type='SCLIP', clip='ViT-B-16'))),
     r'r.json: settings.model is not the model config'),
    (dict(metrics=dict(mIoU=60.0), settings='model'), r'r.json: not a results JSON of fsa-seg'),
])
def test_compare_refuses_results_without_a_usable_miou_or_model(record, message, tmp_path):
    path = tmp_path / 'r.json'
    path.write_text(json.dumps(record))
    with pytest.raises(ResultsFileError, match=message) as error:
        compare(str(path))
    assert '\n' not in str(error.value)


def test_compare_takes_a_whole_number_miou(tmp_path):
    path = results_file(tmp_path, dict(type='SCLIP', vocabulary='voc21'), miou=60)
    assert 'ours: mIoU 60.00' in compare(path)
