# SC-CLIP's protocol on ADE20K (its configs/cfg_ade20k.py @0417ba9, ViT-B/16).
_base_ = ['../datasets/ade20k_short_side_336.py']  # images resized to short side 336
protocol = dict(
    logit_scale=40.0, prob_thd=0.0,
    test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)),
)
