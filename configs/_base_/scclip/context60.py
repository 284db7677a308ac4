# SC-CLIP's protocol on PASCAL Context 60 (its configs/cfg_context60.py @0417ba9, ViT-B/16).
_base_ = ['../datasets/context60.py']

protocol = dict(
    logit_scale=40.0, prob_thd=0.15,
    test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)),
)
