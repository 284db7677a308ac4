# ResCLIP's protocol on PASCAL Context 59 (its configs/cfg_context59.py) where it differs from ours.
_base_ = ['../datasets/context59.py']

protocol = dict(
    prob_thd=0.0, test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)),
    temp_thd=0.25, attn_rcs_weights=(2.0, 0.4), attn_sfr_weights=(1.8, 0.7),
)
