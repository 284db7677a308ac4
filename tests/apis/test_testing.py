"""The results JSON of ``tools/test.py`` (fsa_seg/apis/testing.py ``write_results``)."""
import json

import pytest
import torch
from mmengine.config import Config

from fsa_seg.apis.testing import write_results
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
