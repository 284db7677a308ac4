"""``tools/test.py``'s library code (fsa_seg/apis/testing.py): the config set up for testing, the
dataset checks before the run and the results JSON (``write_results``)."""
import json
import re
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from fsa_seg.apis import load_test_config
from fsa_seg.apis.configs import ConfigError
from fsa_seg.apis.testing import (
    check_dataset,
    check_dataset_size,
    journal_settings,
    write_results,
)
from fsa_seg.datasets import DatasetError, SplitCount
from fsa_seg.models.cuda_graphs import CropGraphs

from doubles import RecordingCapture
from synthetic_data import make_voc21

REPO = Path(__file__).resolve().parents[2]


def test_the_results_name_the_crops_whose_cuda_graph_capture_failed(tmp_path):
    """With --cuda-graphs, the crops this process could not capture (they ran eagerly) are
    listed, for a wrapped model too; without graphs asked for, the key is absent."""
    cfg = Config(dict(model=dict(type='ProxyCLIP'), launcher='none',
                      test_dataloader=dict(dataset=dict(type='PascalVOCDataset', pipeline=[]))))
    graphs = CropGraphs(device_types=('cpu',),
                        capture=RecordingCapture(fails_with=RuntimeError('no capture here')))
    with pytest.warns(UserWarning, match='capture failed'), torch.no_grad():
        graphs(lambda crops: crops * 2, torch.ones(2, 3), 'state')
    model, wrapper = torch.nn.Module(), torch.nn.Module()
    model.crop_graphs, wrapper.module = graphs, model
    path = tmp_path / 'results.json'
    for given in (model, wrapper):
        write_results(str(path), cfg, {'mIoU': 50.0}, [], True, model=given)
        results = json.loads(path.read_text())
        assert results['cuda_graph_failures'] == ['crops of shape (2, 3): no capture here']
        assert results['metrics'] == {'mIoU': 50.0}
    model.crop_graphs = None
    write_results(str(path), cfg, {'mIoU': 50.0}, [], True, model=model)
    assert 'cuda_graph_failures' not in json.loads(path.read_text())


PROXYCLIP = 'proxyclip_fsa_vit-b16_dino-b8_voc21'


def test_crops_replay_from_cuda_graphs_by_default_where_cuda_is_there_and_windows_slide(
        monkeypatch):
    """Default (cuda_graphs=None): on with CUDA for a segmentor that can replay its sliding
    windows; not for CASS (no error), whole-image inference, or without CUDA; the config's own
    setting and the caller's win."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    assert load_test_config(PROXYCLIP).model.cuda_graphs is True
    assert 'cuda_graphs' not in load_test_config('cass_vit-b16_voc21').model
    whole = load_test_config(PROXYCLIP, {'model.test_cfg': dict(mode='whole')})
    assert 'cuda_graphs' not in whole.model
    assert load_test_config(PROXYCLIP, {'model.cuda_graphs': False}).model.cuda_graphs is False
    assert load_test_config(PROXYCLIP, cuda_graphs=False).model.cuda_graphs is False
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert 'cuda_graphs' not in load_test_config(PROXYCLIP).model
    assert load_test_config(PROXYCLIP, cuda_graphs=True).model.cuda_graphs is True


def test_a_journal_holds_for_runs_with_and_without_cuda_graphs():
    """Replays compute what eager runs compute: --resume takes either run's images; another
    threshold does change the settings."""
    graphed = load_test_config(PROXYCLIP, cuda_graphs=True)
    assert journal_settings(graphed) == journal_settings(
        load_test_config(PROXYCLIP, cuda_graphs=False))
    assert journal_settings(graphed) != journal_settings(
        load_test_config(PROXYCLIP, {'model.prob_thd': 0.3}, cuda_graphs=True))


@pytest.mark.parametrize('options', [{}, dict(random_weights=True), dict(precision='fp16'),
                                     dict(trust_checkpoint=True)])
def test_a_config_without_a_model_is_refused_before_anything_reads_the_model(options):
    """A dataset config (or another partial one) names itself in one line, whatever options
    would change the model."""
    voc21 = REPO / 'configs' / '_base_' / 'datasets' / 'voc21.py'
    with pytest.raises(ConfigError, match=rf'^{re.escape(str(voc21))}: no model to evaluate '
                                          r'\(a dataset or other partial config\?'):
        load_test_config(voc21, **options)


def test_a_config_without_a_dataset_is_refused(tmp_path):
    config = tmp_path / 'model_only.py'
    config.write_text("model = dict(type='ClearCLIP')\n")
    with pytest.raises(ConfigError, match=rf'^{re.escape(str(config))}: no '
                                          r'test_dataloader\.dataset to evaluate on$'):
        load_test_config(config)


def test_a_subset_chosen_with_indices_is_no_complete_split(tmp_path):
    """Three images on disk, an official split of three: the whole split is complete; one image
    of it (indices=1) or two of a split of four are refused, and with --allow-partial-split
    are not complete."""
    def counted(indices, split_size=3):
        cfg = load_test_config(PROXYCLIP, {'test_dataloader.dataset.data_root': str(root),
                                           'test_dataloader.dataset.indices': indices,
                                           'split_size': split_size})
        return cfg, check_dataset(cfg)

    root = make_voc21(tmp_path)
    cfg, count = counted(None)
    assert count == SplitCount(listed=3, evaluated=3)
    assert check_dataset_size(cfg, count, allow_partial=False) is True
    cfg, count = counted(1)
    assert count == SplitCount(listed=3, evaluated=1)
    with pytest.raises(DatasetError, match=r'^PascalVOCDataset: test_dataloader.dataset.indices '
                                           r'selects 1 of the 3 images of the official .* '
                                           r'pass --allow-partial-split'):
        check_dataset_size(cfg, count, allow_partial=False)
    assert check_dataset_size(cfg, count, allow_partial=True) is False
    cfg, count = counted([0, 2], split_size=2)  # as many as the official split, not all listed
    assert count == SplitCount(listed=3, evaluated=2)
    assert check_dataset_size(cfg, count, allow_partial=True) is False


def test_indices_past_the_images_listed_name_the_config(tmp_path):
    root = make_voc21(tmp_path)
    cfg = load_test_config(PROXYCLIP, {'test_dataloader.dataset.data_root': str(root),
                                       'test_dataloader.dataset.indices': [0, 3]})
    with pytest.raises(ConfigError, match=r'proxyclip_fsa_vit-b16_dino-b8_voc21.py: '
                                          r'test_dataloader.dataset: indices: 3 outside the 3 '
                                          r'images listed'):
        check_dataset(cfg)


def test_a_vocabulary_of_another_class_count_than_the_dataset_is_refused(tmp_path):
    """mmseg's metric counts the prediction i as the dataset's class i: VOC20's 20 classes
    against VOC21's 21 would be scored silently, each shifted by one."""
    root = make_voc21(tmp_path)
    overrides = {'test_dataloader.dataset.data_root': str(root)}
    check_dataset(load_test_config(PROXYCLIP, overrides))   # voc21 on VOC21
    for vocabulary, described in (('voc20', "'voc20'"), (['sky', 'tree'], 'a list')):
        cfg = load_test_config(PROXYCLIP, dict(overrides, **{'model.vocabulary': vocabulary}))
        count = 20 if vocabulary == 'voc20' else 2
        with pytest.raises(ConfigError, match=re.escape(
                f'proxyclip_fsa_vit-b16_dino-b8_voc21.py: the model segments {count} classes '
                f'(model.vocabulary: {described}) but PascalVOCDataset scores 21 (background, '
                'aeroplane, bicycle, ...)')):
            check_dataset(cfg)
