"""Training data without MXNet: RecordIO packs, image folders, synthetic data, samplers and loaders."""
