"""tinymorph's language server (pygls 2). It reaches the model only through `steering.Engine`."""
