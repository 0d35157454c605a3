"""Cross-encoder scoring and training (no Beam): the model behind `CrossEncoderDenoise`."""
