"""InsightFace ms1mv2_r50: ArcFace r50 on MS1MV2 (faces_emore), 8 GPUs x 128, 20 epochs."""
margin_list = (1.0, 0.5, 0.0)
network = "r50"
embedding_size = 512
sample_rate = 1.0
fp16 = True
momentum = 0.9
weight_decay = 5e-4
batch_size = 128
lr = 0.1
verbose = 2000
dali = False
rec = "/train_tmp/faces_emore"
num_classes = 85742
num_image = 5822653
num_epoch = 20
warmup_epoch = 0
val_targets = ["lfw", "cfp_fp", "agedb_30"]
