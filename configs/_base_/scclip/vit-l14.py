# SC-CLIP's layer indices for CLIP ViT-L/14, from the official code's FIRST commit (74471da, a
# commented block of configs/base_config.py that 0417ba9 deleted). That commit detected the
# outliers as the 10 tokens of largest L2 norm; here, as at 0417ba9, the LOF detects them:
# no official commit ran these settings with the LOF.
scclip_settings = dict(pre_adjust_idx=16, post_adjust_idx=6, multi_start_idx=8, multi_end_idx=19,
                     res_cls=0.1)
