"""The reproducible corpus of the default SAE: `python -m steering.recipe DEB OUT [--samples N]`.

- Freely licensed English prose the package registries carry: the reStructuredText sources of the Python 3.11
  documentation (PSF licence) from Debian's `python3.11-doc` package (`apt-get download python3.11-doc`), without
  the changelog (a list of issue numbers).
- The default model's own samples at temperature 1 from an empty prompt (seeded).

Files go to OUT/train and OUT/heldout: about 5 % of the documentation files (chosen by a hash of their path) and one
sample file are held out for `eval-sae`. Nothing of the corpus is committed; this module rebuilds it.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOC_PREFIX = "usr/share/doc/python3.11/html/_sources"
SKIP = ("whatsnew/changelog.rst.txt",)


def held_out(name: str, percent: int = 5) -> bool:
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % 100 < percent


def extract_docs(deb: Path, out: Path) -> int:
    """Unpack the .deb (dpkg-deb) and copy its .rst.txt sources into out/train and out/heldout; returns a count."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        root = Path(tmp) / DOC_PREFIX
        count = 0
        for src in sorted(root.rglob("*.rst.txt")):
            rel = src.relative_to(root).as_posix()
            if rel in SKIP:
                continue
            dest = out / ("heldout" if held_out(rel) else "train") / "python-docs" / rel.replace("/", "__")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest.with_suffix(".txt"))
            count += 1
    return count


def write_samples(out: Path, n: int, length: int = 256, batch: int = 32, seed: int = 0) -> int:
    """n samples of `length` tokens from the default model at temperature 1, from the start token alone."""
    import torch

    from .models import load_model

    lm = load_model("default")
    torch.manual_seed(seed)
    start = lm.tokenizer.bos_token_id
    written = 0
    for first in range(0, n, batch):
        size = min(batch, n - first)
        ids = torch.full((size, 1), start, device=lm.device)
        with torch.inference_mode():
            gen = lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                    top_p=1.0, top_k=0, max_new_tokens=length, pad_token_id=lm.tokenizer.eos_token_id)
        texts = [lm.tokenizer.decode(row[1:], skip_special_tokens=True).strip() for row in gen]
        split = "heldout" if first == 0 else "train"
        dest = out / split / "samples" / f"samples-{first // batch:03d}.txt"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text("\n\n".join(t for t in texts if t) + "\n", encoding="utf-8")
        written += size
        sys.stderr.write(f"samples: {written}/{n}\n")
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("deb", type=Path, help="python3.11-doc_*.deb (apt-get download python3.11-doc)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--samples", type=int, default=256, help="model samples of 256 tokens")
    args = ap.parse_args(argv)
    docs = extract_docs(args.deb, args.out)
    sys.stderr.write(f"python docs: {docs} files\n")
    write_samples(args.out, args.samples)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
