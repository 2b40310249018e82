"""Sparse autoencoders: the SAE itself and the on-disk layouts it is read from."""
