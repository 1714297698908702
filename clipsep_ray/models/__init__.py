"""Models: the audio U-Net, the query encoder, CLIPSep and its baselines, checkpoints."""
