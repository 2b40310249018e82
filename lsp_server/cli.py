"""The `tinymorph` console script: `tinymorph serve` starts the language server; every other subcommand is the
engine's CLI (`steering.cli`), which knows nothing of the server."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from .__main__ import main as serve

        return serve(argv[1:])
    from steering.cli import main as engine

    return engine(argv)


if __name__ == "__main__":
    raise SystemExit(main())
