# ResCLIP's protocol on COCO-Object (its configs/cfg_coco_object.py) where it differs from ours.
_base_ = ['../datasets/coco_object.py']

protocol = dict(
    vocabulary='cass_coco_object',  # its 113 names for 81 classes (SCLIP's, as CASS's)
    prob_thd=0.1, test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)),
    temp_thd=0.11, attn_rcs_weights=(2.0, 0.4), attn_sfr_weights=(1.8, 0.7),
)
