"""InsightFace ms1mv3_r100: ms1mv3_r50 with the r100 backbone."""
extends = "ms1mv3_r50"
network = "r100"
