# PASCAL Context val without background (59 classes): the Context60 files, background ignored.
_base_ = './context60.py'

dataset_type = 'PascalContextDataset59'
test_dataloader = dict(dataset=dict(type=dataset_type))

protocol = dict(vocabulary='context59', prob_thd=0.0)
