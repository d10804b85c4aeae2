"""A CPU-sized ViT run on the 10 real faces of ../shared/data/small_dataset_rec (an MXNet-written pack).

InsightFace's ViT-T (vit_t_dp005_mask0) with the WebFace42M ViT jobs' CosFace margin and AdamW, one
process, batch 5 (two steps per epoch), 8 steps in all; every artefact of a real run is written.
"""
margin_list = (1.0, 0.0, 0.4)
network = "vit_t_dp005_mask0"
embedding_size = 512
sample_rate = 1.0
fp16 = False
optimizer = "adamw"
lr = 0.001
weight_decay = 0.1
batch_size = 5
frequent = 2
save_every = 3
num_workers = 0
rec = "../shared/data/small_dataset_rec"
num_classes = 10
num_image = 10
num_epoch = 4
warmup_epoch = 1
val_targets = []
