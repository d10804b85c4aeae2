"""Training data without MXNet: RecordIO packs, image folders, synthetic data, samplers and loaders.

- ``recordio``: the MXNet RecordIO format (reader by key, writer, ``.idx``); ``python -m train.data.recordio``
  runs the pack tools of ``tools`` (dump, verify, pack, unpack, shuffle).
- ``layout``: InsightFace's pack layout (meta header, identity records, ``property``);
  ``verify``: the full checks.
- ``folders``: ``label.txt`` and class-folder image sets; ``transforms``: decode, flip, normalise.
- ``datasets`` (RecordDataset, ImageFolderDataset, SyntheticDataset), ``sampler`` (DistributedSampler),
  ``loader`` (get_dataloader): the Paddle side.

Nothing is imported here, so the command-line tools start without importing Paddle.
"""
