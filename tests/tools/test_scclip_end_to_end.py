"""SC-CLIP + FSA end to end with a tiny random 12-layer CLIP (SC-CLIP's B/16 layer indices):
through tools/test.py on a generated VOC21 split and through ``fsa-seg predict``, each checked
against labels post-processed here by hand from the segmentor's slide logits (SC-CLIP's VOC21
post-processing: logit_scale 50, and area and probability thresholds, raised here so that both
change labels of a random model)."""
import contextlib
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fsa_seg import cli
from fsa_seg.apis import init_segmentor
from fsa_seg.apis.inference import build_test_pipeline, load_image

from end_to_end import REPO, assert_reports_the_iou_of_its_own_predictions, run_test_script
from synthetic_data import make_benchmark

CONFIG = REPO / 'configs' / 'scclip' / 'scclip_fsa_vit-b16_voc21.py'
AREA_THD, PROB_THD = 0.5, 0.5   # SC-CLIP's VOC21 config: 0.1 and 0.15
TINY_ARCH = ("dict(embed_dim=32, vision_cfg=dict(image_size=224, patch_size=16, width=32, "
             "layers=12, head_width=8, mlp_ratio=4.0), text_cfg=dict(context_length=77, "
             "vocab_size=49408, width=32, heads=2, layers=1))")


def tiny_config(folder: Path, data_root: Path = None) -> Path:
    """The VOC21 SC-CLIP + FSA config with a tiny random CLIP and the thresholds above;
    everything else its own (slide 224 / 112, short side 336, logit_scale 50)."""
    data = (f"test_dataloader = dict(num_workers=0, persistent_workers=False,\n"
            f"                       dataset=dict(data_root='{data_root}'))\n"
            if data_root else '')
    path = folder / 'tiny_scclip_fsa_voc21.py'
    path.write_text(f"_base_ = ['{CONFIG}']\n"
                    f"model = dict(clip=dict(_delete_=True, random_init=True, arch={TINY_ARCH}),\n"
                    f"             area_thd={AREA_THD}, prob_thd={PROB_THD}, templates='plain',\n"
                    f"             text_cache_dir='{folder / 'text'}')\n"
                    + data)
    return path


def labels_by_hand(model, rgb: np.ndarray):
    """The config's pipeline and the model's data preprocessor, the segmentor's slide logits,
    then SC-CLIP's post-processing written out: resize to the original size, softmax of
    logit_scale × logits over the names, max over each class's names, classes ≥ 1 winning at
    most area_thd of the pixels won by classes ≥ 1 set to 0, argmax, prob_thd → class 0.
    Returns the labels and whether the area threshold removed a class that won pixels."""
    prepared = build_test_pipeline(model.cfg)(dict(img=np.ascontiguousarray(rgb[..., ::-1])))
    batch = model.data_preprocessor(dict(inputs=[prepared['inputs']],
                                         data_samples=[prepared['data_samples']]), False)
    image, meta = batch['inputs'][0], batch['data_samples'][0].metainfo
    height, width = meta['img_shape'][:2]
    with torch.no_grad():
        logits = model.inference_logits(image[:, :height, :width]).double()
    logits = F.interpolate(logits[None], size=meta['ori_shape'][:2], mode='bilinear',
                           align_corners=False)[0]
    probs = (logits * 50.0).softmax(dim=0).numpy()
    query_to_class = np.asarray(model.vocabulary.query_to_class)
    probs = np.stack([probs[query_to_class == c].max(0) for c in range(21)])
    areas = np.bincount(probs.argmax(0).ravel(), minlength=21)
    removed = areas[1:] <= AREA_THD * areas[1:].sum()
    probs[1:][removed] = 0
    winners = probs.argmax(0)
    uncertain = probs.max(0) < PROB_THD
    labels = np.where(uncertain, 0, winners)
    return labels, dict(area=bool((removed & (areas[1:] > 0)).any()),
                        prob=bool((uncertain & (winners != 0)).any()))


def test_tools_test_scores_its_own_predictions(tmp_path):
    """The mIoU tools/test.py reports equals the IoU computed here from the labels by hand and
    the raw annotations."""
    data_root = make_benchmark('voc21', tmp_path / 'data', sizes=((64, 80), (72, 64)))
    config = tiny_config(tmp_path, data_root)
    out = tmp_path / 'results.json'
    run_test_script(config, '--work-dir', tmp_path / 'work', '--out', out,
                    '--allow-partial-split', '--cfg-options', 'randomness.seed=0')
    model = init_segmentor(str(config), device='cpu', seed=0)
    assert model.logit_scale == 50 and model.plugin is not None
    changed = dict(area=False, prob=False)

    def labels_of(image):
        labels, changes = labels_by_hand(model, load_image(image))
        changed.update({key: changed[key] or changes[key] for key in changed})
        return labels

    assert_reports_the_iou_of_its_own_predictions(config, data_root, out, 'voc21', labels_of)
    assert changed == dict(area=True, prob=True)       # both thresholds changed labels


def test_predict_saves_the_labels_computed_by_hand(tmp_path):
    rng = np.random.default_rng(3)
    images = tmp_path / 'images'
    images.mkdir()
    for name, (height, width) in (('wide', (60, 90)), ('tall', (80, 56))):
        blocks = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
        image = np.kron(blocks, np.ones((-(-height // 4), -(-width // 4), 1), np.uint8))
        Image.fromarray(image[:height, :width]).save(images / f'{name}.png')
    config = tiny_config(tmp_path)
    out = tmp_path / 'out'
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = cli.main(['predict', str(images), '--config', str(config), '--random-weights',
                           '--out-dir', str(out), '--quiet'])
    assert status == 0, stderr.getvalue()

    model = init_segmentor(str(config), device='cpu', random_weights=True)
    changed = dict(area=False, prob=False)
    for name in ('wide', 'tall'):
        expected, changes = labels_by_hand(model, load_image(images / f'{name}.png'))
        changed = {key: changed[key] or changes[key] for key in changed}
        with Image.open(out / f'{name}_labels.png') as saved:
            assert saved.mode == 'P'
            np.testing.assert_array_equal(np.array(saved), expected)
    assert changed == dict(area=True, prob=True)
