"""InsightFace ms1mv3_r100: ArcFace r100 on MS1MV3, 8 GPUs x 128, 20 epochs."""
margin_list = (1.0, 0.5, 0.0)
network = "r100"
embedding_size = 512
sample_rate = 1.0
fp16 = True
momentum = 0.9
weight_decay = 5e-4
batch_size = 128
lr = 0.1
verbose = 2000
dali = False
rec = "/train_tmp/ms1m-retinaface-t1"
num_classes = 93431
num_image = 5179510
num_epoch = 20
warmup_epoch = 0
val_targets = ["lfw", "cfp_fp", "agedb_30"]
