"""Training SAEs on the user's text: corpora, activation streams, the training loop, checkpoints and curves."""
