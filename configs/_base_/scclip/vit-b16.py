# SC-CLIP's layer indices for CLIP ViT-B/16 (its configs/base_config.py @0417ba9).
scclip_settings = dict(pre_adjust_idx=8, post_adjust_idx=3, multi_start_idx=3, multi_end_idx=10,
                     res_cls=0.3)
