"""Defaults of every run: InsightFace arcface_torch configs/base.py (reference §6.3).

Job configs override a few of these, like InsightFace's: `key = value` lines, parsed, never executed.
"""
margin_list = (1.0, 0.5, 0.0)
network = "r50"
resume = False
save_all_states = True
output = None
embedding_size = 512
sample_rate = 1.0
interclass_filtering_threshold = 0.0
fp16 = False
batch_size = 128
optimizer = "sgd"
lr = 0.1
momentum = 0.9
weight_decay = 5e-4
verbose = 2000
frequent = 10
dali = False
dali_aug = False
gradient_acc = 1
seed = 2048
num_workers = 2
using_wandb = False
