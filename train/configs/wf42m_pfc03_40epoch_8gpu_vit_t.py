"""InsightFace wf42m_pfc03_40epoch_8gpu_vit_t: CosFace ViT-T on WebFace42M, Partial FC 0.3, AdamW, 40 epochs.

8 GPUs x 512; warmup 4 epochs (InsightFace writes num_epoch // 10). The other WebFace42M ViT jobs extend
this one.
"""
margin_list = (1.0, 0.0, 0.4)
network = "vit_t_dp005_mask0"
embedding_size = 512
sample_rate = 0.3
fp16 = True
weight_decay = 0.1
batch_size = 512
optimizer = "adamw"
lr = 0.001
verbose = 2000
dali = False
rec = "/train_tmp/WebFace42M"
num_classes = 2059906
num_image = 42474557
num_epoch = 40
warmup_epoch = 4
val_targets = []
