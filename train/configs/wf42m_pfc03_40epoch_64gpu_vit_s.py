"""InsightFace wf42m_pfc03_40epoch_64gpu_vit_s: ViT-S, 64 GPUs x 384."""
extends = "wf42m_pfc03_40epoch_8gpu_vit_t"
network = "vit_s_dp005_mask_0"
batch_size = 384
