"""A CPU-sized run on the 10 real faces of ../shared/data/small_dataset_rec (an MXNet-written pack).

ArcFace r18, one process, the whole pack as one batch per step. It shows the loss falling and writes
every artefact of a real run (checkpoints, metrics.jsonl, model.pdparams, model.pt) in minutes on CPU.
"""
margin_list = (1.0, 0.5, 0.0)
network = "r18"
embedding_size = 512
sample_rate = 1.0
fp16 = False
weight_decay = 5e-4
batch_size = 10
lr = 0.02
verbose = 2000
frequent = 5
save_every = 10
num_workers = 0
rec = "../shared/data/small_dataset_rec"
num_classes = 10
num_image = 10
num_epoch = 30
warmup_epoch = 0
val_targets = []
