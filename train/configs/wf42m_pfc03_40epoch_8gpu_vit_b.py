"""InsightFace wf42m_pfc03_40epoch_8gpu_vit_b: ViT-B, 8 GPUs x 256, 12 iterations accumulated per update."""
extends = "wf42m_pfc03_40epoch_8gpu_vit_t"
network = "vit_b_dp005_mask_005"
batch_size = 256
gradient_acc = 12
