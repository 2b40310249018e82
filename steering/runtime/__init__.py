"""The model at work: loading it, hooks on its residual stream, the decode loop, steering sets and style vectors."""
