# ResCLIP's protocol on ADE20K (its configs/cfg_ade20k.py) where it differs from ours.
_base_ = ['../datasets/ade20k_short_side_336.py']  # images resized to short side 336
protocol = dict(
    prob_thd=0.0, test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)),
    temp_thd=0.25, attn_rcs_weights=(2.0, 0.3), attn_sfr_weights=(2.1, 0.7),
)
