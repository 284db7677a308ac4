# CASS's protocol on ADE20K (its configs/cfg_ade20k.py) where it differs from ours.
_base_ = ['../datasets/ade20k_short_side_336.py']  # images resized to short side 336
protocol = dict(
    prob_thd=0.0, test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)),
    global_semantics_weight=0.3, mean_vector_weight=0.05, h_threshold=0.06,
    scale_singular_values=True, whole_image_global=True,
)
