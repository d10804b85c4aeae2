"""InsightFace wf42m_pfc02_r100: CosFace r100 on WebFace42M with Partial FC sampling 0.2, 20 epochs.

WebFace42M's 42.5 M images exceed what float32 record labels index exactly; InsightFace uses a
header-less (im2rec/shuffled) pack for it.
"""
margin_list = (1.0, 0.0, 0.4)
network = "r100"
embedding_size = 512
sample_rate = 0.2
fp16 = True
momentum = 0.9
weight_decay = 5e-4
batch_size = 128
lr = 0.1
verbose = 10000
dali = False
rec = "/train_tmp/WebFace42M"
num_classes = 2059906
num_image = 42474557
num_epoch = 20
warmup_epoch = 0
val_targets = []
