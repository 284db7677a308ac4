"""The results JSON of ``tools/test.py`` (fsa_seg/apis/testing.py ``write_results``)."""
import json

import pytest
import torch
from mmengine.config import Config

from fsa_seg.apis import load_test_config
from fsa_seg.apis.testing import journal_settings, write_results
from fsa_seg.models.cuda_graphs import CropGraphs

from doubles import RecordingCapture


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
