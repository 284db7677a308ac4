# PASCAL VOC 2012 val without background (20 classes): the VOC21 files, background ignored.
_base_ = './voc21.py'

dataset_type = 'PascalVOC20Dataset'  # registered by fsa_seg.datasets
test_dataloader = dict(dataset=dict(type=dataset_type))

protocol = dict(vocabulary='voc20', prob_thd=0.0)
