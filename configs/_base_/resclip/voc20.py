# ResCLIP's protocol on VOC20 (its configs/cfg_voc20.py) where it differs from ours.
_base_ = ['../datasets/voc20.py']

protocol = dict(
    prob_thd=0.0, test_cfg=dict(_delete_=True, mode='whole'),  # whole-image inference
    temp_thd=0.1, attn_rcs_weights=(2.0, 0.6), attn_sfr_weights=(2.1, 0.6),
)
