# SC-CLIP's protocol on VOC20 (its configs/cfg_voc20.py @0417ba9, ViT-B/16).
_base_ = ['../datasets/voc20.py']

protocol = dict(
    logit_scale=40.0, prob_thd=0.0,
    test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)),
)
