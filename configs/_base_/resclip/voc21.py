# ResCLIP's protocol on VOC21 (its configs/cfg_voc21.py) where it differs from ours.
_base_ = ['../datasets/voc21.py']

protocol = dict(
    prob_thd=0.1, test_cfg=dict(_delete_=True, mode='whole'),  # whole-image inference
    temp_thd=0.5, attn_rcs_weights=(2.0, 0.3), attn_sfr_weights=(2.2, 0.7),
)
