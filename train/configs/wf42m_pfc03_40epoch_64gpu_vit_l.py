"""InsightFace wf42m_pfc03_40epoch_64gpu_vit_l: ViT-L, 64 GPUs x 384."""
extends = "wf42m_pfc03_40epoch_8gpu_vit_t"
network = "vit_l_dp005_mask_005"
batch_size = 384
