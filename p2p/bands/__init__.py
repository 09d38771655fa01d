"""Band values, shared by training, tiling and prediction: per-band statistics and the scaling
to the networks' range (`normalization`), the dihedral symmetries of chips and windows
(`augment`: training's flips and quarter turns, prediction's test-time averaging), and the two
baselines every model is scored against (`baselines`: the per-band mean and a per-pixel
least-squares fit). Data, not networks: numpy (and torch for tensors) only, so `p2p.model`,
`p2p.data` and `p2p.infer` all build on it."""
