# SC-CLIP's protocol on VOC21 for ViT-L/14 (its configs/cfg_voc21.py at the first commit 74471da,
# commented there): logit_scale 40 (B/16: 50) and prob_thd 0.2 (B/16: 0.15).
_base_ = ['./voc21.py']

protocol = dict(logit_scale=40.0, prob_thd=0.2)
