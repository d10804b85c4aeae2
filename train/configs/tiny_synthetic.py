"""A seconds-long CPU run on synthetic data (MobileFaceNet, 64 identities), for smoke and resume tests."""
margin_list = (1.0, 0.5, 0.0)
network = "mbf"
embedding_size = 128
sample_rate = 0.5
fp16 = False
weight_decay = 5e-4
batch_size = 8
lr = 0.05
frequent = 2
save_every = 3
num_workers = 0
rec = "synthetic"
num_classes = 64
num_image = 64
num_epoch = 4
warmup_epoch = 1
val_targets = []
