"""InsightFace ms1mv3_r50_onegpu: ms1mv3_r50 on one GPU with lr 0.02 (809,280 steps)."""
extends = "ms1mv3_r50"
lr = 0.02
