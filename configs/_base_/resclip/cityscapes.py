# ResCLIP's protocol on Cityscapes (its configs/cfg_city_scapes.py) where it differs from ours.
_base_ = ['../datasets/cityscapes_short_side_560.py']  # short side 560
protocol = dict(
    prob_thd=0.0, test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)),
    temp_thd=0.1, attn_rcs_weights=(2.0, 0.2), attn_sfr_weights=(2.1, 0.6),
)
