"""ResCLIP (± FSA) end to end with a tiny random CLIP: ``tools/test.py`` on a generated dataset
and ``fsa-seg predict``, each against results computed here from the same model."""
import contextlib
import io
from pathlib import Path

import mmcv
import numpy as np
import torch
from mmseg.structures import SegDataSample
from PIL import Image

from fsa_seg import cli
from fsa_seg.apis import init_segmentor

from end_to_end import (
    REPO,
    TINY_ARCH,
    assert_reports_the_iou_of_its_own_predictions,
    run_test_script,
)
from synthetic_data import make_benchmark

# TINY_ARCH has 3 blocks: RCS reads the attentions of its blocks 0 and 1 (the official 5-8
# need 10).


def tiny_config(tmp_path: Path, config: str, data_root: Path = None) -> Path:
    """One of our ResCLIP configs with a tiny random CLIP."""
    text = (f"_base_ = ['{REPO / 'configs' / config}']\n"
            f"model = dict(clip=dict(_delete_=True, random_init=True, arch={TINY_ARCH}),\n"
            "             templates='plain', rcs_layers=(0, 1))\n")
    if data_root is not None:
        text += ("test_dataloader = dict(num_workers=0, persistent_workers=False,\n"
                 f"                       dataset=dict(data_root='{data_root}'))\n")
    path = tmp_path / ('tiny_' + Path(config).name)
    path.write_text(text)
    return path


def test_resclip_with_fsa_through_tools_test_scores_its_own_predictions(tmp_path):
    """VOC20 (ResCLIP's whole-image protocol) + FSA: the IoUs tools/test.py reports equal those
    computed here from the same model's predictions and the raw annotations."""
    data_root = make_benchmark('voc20', tmp_path / 'data', sizes=((64, 80), (72, 56)))
    config = tiny_config(tmp_path, 'resclip/resclip_fsa_vit-b16_voc20.py', data_root)
    out = tmp_path / 'results.json'
    run_test_script(config, '--work-dir', tmp_path / 'work', '--out', out,
                    '--allow-partial-split', '--cfg-options', 'randomness.seed=0')
    from mmengine.config import Config
    model = Config.fromfile(str(config)).model
    assert model.test_cfg.mode == 'whole' and model.plugin.type == 'FSA'
    confusion = assert_reports_the_iou_of_its_own_predictions(config, data_root, out, 'voc20')
    assert (confusion.sum(0) > 0).sum() > 1           # not one class everywhere


def blocks(height, width, seed, grid=4):
    """RGB flat colour blocks (varied labels even from a random model)."""
    colours = np.random.default_rng(seed).integers(0, 256, (grid, grid, 3))
    image = np.kron(colours, np.ones((-(-height // grid), -(-width // grid), 1)))
    return image[:height, :width].astype(np.uint8)


def test_fsa_seg_predict_writes_the_model_labels(tmp_path):
    """``fsa-seg predict`` with ResCLIP + FSA (Context59's slide protocol): the label PNG equals
    the prediction of the same random model on the image resized (short side 336, as the
    config's pipeline) and normalised here by hand."""
    config = tiny_config(tmp_path, 'resclip/resclip_fsa_vit-b16_context59.py')
    rgb = blocks(48, 64, seed=5)
    Image.fromarray(rgb).save(tmp_path / 'scene.png')
    out = tmp_path / 'out'
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        status = cli.main(['predict', str(tmp_path / 'scene.png'), '--config', str(config),
                           '--random-weights', '--vocab', 'sky', 'tree', 'house; building',
                           '--out-dir', str(out), '--quiet'])
    assert status == 0
    labels = np.array(Image.open(out / 'scene_labels.png'))

    model = init_segmentor(str(config), device='cpu', random_weights=True,
                           vocabulary=['sky', 'tree', 'house; building'])
    resized = mmcv.imrescale(rgb, (2048, 336), interpolation='bilinear')      # 336 × 448
    mean = torch.tensor([122.771, 116.746, 104.094]).view(3, 1, 1)
    std = torch.tensor([68.501, 66.632, 70.323]).view(3, 1, 1)
    x = (torch.from_numpy(resized).permute(2, 0, 1).float() - mean) / std
    sample = SegDataSample(metainfo=dict(img_shape=resized.shape[:2], ori_shape=rgb.shape[:2]))
    with torch.no_grad():
        expected = model.predict(x[None], [sample])[0].pred_sem_seg.data[0].numpy()
    assert resized.shape[:2] == (336, 448) and labels.shape == (48, 64)
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(labels, expected)
