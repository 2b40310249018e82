"""SAEs named the way SAELens names them, `RELEASE/ID` (e.g. `gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical`
or `gpt2-small-res-jb/blocks.8.hook_resid_pre`), found in the local Hugging Face cache, never downloaded.

The registry of releases (`steering/data/sae_releases.json.gz`: per release its Hugging Face repository, model and
per SAE id the path inside the repository and the Neuronpedia id) is derived from SAELens' `pretrained_saes.yaml`
(MIT licence, SAELens 6.54.12); `python -m steering.sae.releases YAML OUT` rebuilds it from a newer one.

The cache is the Hugging Face hub's: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`; a
repository's files lie in `models--ORG--NAME/snapshots/REVISION/`, the revision `refs/main` names first.
"""

from __future__ import annotations

import difflib
import gzip
import json
import os
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from steering.errors import SAELoadError

REGISTRY = Path(__file__).resolve().parent.parent / "data" / "sae_releases.json.gz"


@dataclass(frozen=True)
class ReleaseSAE:
    release: str
    sae_id: str
    repo_id: str
    path: str
    """The SAE's folder inside the repository."""
    model: str | None
    neuronpedia: str | None
    """Its id on Neuronpedia (`gemma-2-2b/20-gemmascope-res-16k`), where it has one."""


@cache
def registry() -> dict[str, Any]:
    """The releases SAELens knows, by name."""
    try:
        data = json.loads(gzip.decompress(REGISTRY.read_bytes()))
    except (OSError, ValueError) as exc:
        raise SAELoadError(f"the SAE release registry {REGISTRY} cannot be read ({exc}); reinstall tinymorph") from None
    return data if isinstance(data, dict) else {}


def split_name(spec: str) -> tuple[str, str] | None:
    """(release, id) when `spec` starts with a known release name followed by `/`, else None."""
    releases = registry()
    head, sep, rest = spec.partition("/")
    if sep and head in releases and rest:
        return head, rest
    return None


def lookup(spec: str) -> ReleaseSAE | None:
    """The registry's entry for `RELEASE/ID`; None when `spec` does not start with a release name; an error naming
    the nearest ids when the release has no such id."""
    parts = split_name(spec)
    if parts is None:
        return None
    release, sae_id = parts
    entry = registry()[release]
    saes = entry.get("saes", {})
    if sae_id not in saes:
        near = difflib.get_close_matches(sae_id, list(saes), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(near)}?" if near else f" It has {len(saes):,} ids, e.g. {next(iter(saes), '-')}."
        raise SAELoadError(f"the release {release} has no SAE {sae_id!r}.{hint}")
    sae = saes[sae_id]
    return ReleaseSAE(release, sae_id, entry["repo_id"], sae["path"], entry.get("model"), sae.get("neuronpedia"))


def hub_cache() -> Path:
    """Where the Hugging Face hub keeps downloaded repositories."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = Path(os.environ["XDG_CACHE_HOME"]).expanduser() if os.environ.get("XDG_CACHE_HOME") else \
        Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _snapshots(repo: Path) -> list[Path]:
    """The repository's snapshots, the one `refs/main` names first, then the newest."""
    folder = repo / "snapshots"
    if not folder.is_dir():
        return []
    found = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    try:
        main = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        main = ""
    return sorted(found, key=lambda p: p.name != main)


def locate(sae: ReleaseSAE, cache_dir: Path | None = None) -> Path:
    """The SAE's folder in the local cache; an error saying how to download it when it is not there."""
    cache_dir = hub_cache() if cache_dir is None else cache_dir
    repo = cache_dir / ("models--" + sae.repo_id.replace("/", "--"))
    for snapshot in _snapshots(repo):
        folder = snapshot / sae.path
        if folder.is_dir() and any(folder.iterdir()):
            return folder
        if folder.is_file():
            return folder
    raise SAELoadError(
        f"{sae.release}/{sae.sae_id} is not in the Hugging Face cache ({cache_dir}): it is {sae.path} of "
        f"{sae.repo_id}. tinymorph does not download; fetch it once with\n"
        f"  huggingface-cli download {sae.repo_id} --include '{sae.path}/*'\n"
        "(or with SAELens), or pass the folder's path to --sae.")


def resolve(spec: str) -> tuple[Path, ReleaseSAE] | None:
    """The cached folder of the SAE `RELEASE/ID`, or None when `spec` does not name a release."""
    sae = lookup(spec)
    if sae is None:
        return None
    return locate(sae), sae


def build(yaml_path: str, out: str) -> int:
    """Write the registry from SAELens' `pretrained_saes.yaml` (needs PyYAML); returns the release count."""
    import yaml  # transformers depends on it

    from steering.atomic import write_bytes

    with open(yaml_path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    releases: dict[str, Any] = {}
    for name, entry in data.items():
        saes = {}
        for sae in entry.get("saes", []):
            item = {"path": sae["path"]}
            if sae.get("neuronpedia"):
                item["neuronpedia"] = sae["neuronpedia"]
            saes[str(sae["id"])] = item
        releases[str(name)] = {"repo_id": entry["repo_id"], "model": entry.get("model"), "saes": saes}
    write_bytes(Path(out), gzip.compress(json.dumps(releases, separators=(",", ":"), sort_keys=True).encode(),
                                         mtime=0))
    return len(releases)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.stderr.write("usage: python -m steering.sae.releases PRETRAINED_SAES.yaml OUT.json.gz\n")
        raise SystemExit(2)
    sys.stdout.write(f"{build(sys.argv[1], sys.argv[2])} releases written to {sys.argv[2]}\n")
