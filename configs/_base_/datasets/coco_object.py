# COCO-Object val2017: background + 80 things (81 classes), label maps made from COCO-Stuff164k
# by tools/dataset_converters/coco_object.py, in the same folder.
_base_ = './coco_stuff164k.py'

dataset_type = 'COCOObjectDataset'  # registered by fsa_seg.datasets
test_dataloader = dict(dataset=dict(type=dataset_type))

protocol = dict(vocabulary='coco_object', prob_thd=0.3)
