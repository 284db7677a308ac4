# SC-CLIP's protocol on VOC21 (its configs/cfg_voc21.py @0417ba9, ViT-B/16).
_base_ = ['../datasets/voc21.py']

protocol = dict(
    logit_scale=50.0, prob_thd=0.15, area_thd=0.1,
    test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)),
)
