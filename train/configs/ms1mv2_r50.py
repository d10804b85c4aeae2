"""InsightFace ms1mv2_r50: ArcFace r50 on MS1MV2 (faces_emore), otherwise as ms1mv3_r50."""
extends = "ms1mv3_r50"
rec = "/train_tmp/faces_emore"
num_classes = 85742
num_image = 5822653
