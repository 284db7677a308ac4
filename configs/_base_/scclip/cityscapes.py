# SC-CLIP's protocol on Cityscapes (its configs/cfg_city_scapes.py @0417ba9, ViT-B/16).
_base_ = ['../datasets/cityscapes_short_side_560.py']  # short side 560
protocol = dict(
    logit_scale=40.0, prob_thd=0.0,
    test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)),
)
