# CASS's protocol on VOC21 (its configs/cfg_voc21.py) where it differs from ours.
_base_ = ['../datasets/voc21.py']

protocol = dict(
    prob_thd=0.1, test_cfg=dict(_delete_=True, mode='whole'),  # whole-image inference
    global_semantics_weight=0.1, mean_vector_weight=0.03, h_threshold=0.10,
    scale_singular_values=True, whole_image_global=True,
)
