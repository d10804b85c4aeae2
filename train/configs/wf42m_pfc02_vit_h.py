"""InsightFace wf42m_pfc02_vit_h: ViT-H, batch 768 per GPU, 16 epochs with 2 of warmup (num_epoch // 8).

Despite its name InsightFace's file samples 0.5 of the class centres. It reads WebFace42M through DALI
with DALI's augmentation (dali = True, dali_aug = True); DALI does not exist for Paddle, so this job
reads the RecordIO pack and dali_aug is accepted but ignored (the run says so).
"""
extends = "wf42m_pfc03_40epoch_8gpu_vit_t"
network = "vit_h"
sample_rate = 0.5
batch_size = 768
num_epoch = 16
warmup_epoch = 2
dali_aug = True
