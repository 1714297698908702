"""Audio front end: STFT and warp, decoding/encoding, windows and overlap-add."""
