"""The fast path: a lean forward of supported model families over their own weights, with caches kept per document, and continuous batching of steered continuations."""
