"""`python -m lsp_server`: the language server is built in a later step; say so instead of failing obscurely."""

import sys


def main() -> int:
    sys.stderr.write("tinymorph: the language server is not built yet; the engine CLI is `tinymorph`.\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
