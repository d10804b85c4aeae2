"""InsightFace ms1mv3_mbf: MobileFaceNet on MS1MV3 with weight decay 1e-4 and 40 epochs."""
extends = "ms1mv3_r50"
network = "mbf"
weight_decay = 1e-4
num_epoch = 40
