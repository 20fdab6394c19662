"""``python -m edge_glass.index SOURCE --out DIR``: embed a gallery with the trained model, resumably.

SOURCE is a folder tree of images/audio (by extension; other files are ignored and counted), the name
of a ``download.local`` entry of the workspace's params, or ``split:<name>`` (a split of the workspace's
download). Bad files are rejects with a reason (``DIR/rejects.csv``), never a crash of the run;
``found = indexed + rejected``. The index records the model's fingerprint; search refuses another model.
The index format and its resume rule are in ``edge_glass/gallery/store.py``; docs/search.md.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge_glass.index", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a folder, a download.local entry name, or split:<train|val|test>")
    p.add_argument("--out", required=True, help="index folder (resumed when it holds finished shards)")
    p.add_argument("--model", default=".", help="a workspace after dvc repro, or an exported model folder (default: .)")
    p.add_argument("--workspace", default=None,
                   help="where download.local entries and splits are looked up (default: --model)")
    p.add_argument("--modality", choices=["auto", "image", "audio"], default="auto",
                   help="which media to index (auto: both, by file extension)")
    p.add_argument("--dim", type=int, default=None, help="embedding dim stored (default: the model's largest MRL dim)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=1000, help="items per embedding shard (the resume unit)")
    p.add_argument("--workers", type=int, default=2, help="threads decoding media ahead of the encoder")
    p.add_argument("--ann", action="store_true", help="also build the approximate index (faiss HNSW)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (as the stages' device)")
    p.add_argument("--no-progress", action="store_true")
    return p


def list_source(source: str, workspace: Path, modality: str):
    """The listing of SOURCE: a folder wins over an entry name; ``split:`` names a workspace split."""
    from edge_glass.gallery.listing import list_folder, list_local_entry, list_split

    if source.startswith("split:"):
        return list_split(workspace, source.removeprefix("split:"), modality)
    if Path(source).is_dir():
        return list_folder(source, modality)
    return list_local_entry(workspace, source, modality)


def run_index(model, source: str, out: str | Path, *, workspace: str | Path = ".", modality: str = "auto",
              dim: int | None = None, batch_size: int = 32, shard_size: int = 1000, workers: int = 2,
              ann: bool = False, progress: bool = True) -> dict:
    """Index SOURCE with ``model`` (an ``edge_glass.load`` result) into ``out``; returns index.json's dict."""
    from edge_glass.core.errors import DataError, MediaError
    from edge_glass.gallery.listing import MAX_FILE_BYTES
    from edge_glass.gallery.store import build_index, finish_index

    if batch_size < 1 or shard_size < 1:
        raise DataError("--batch-size and --shard-size must be >= 1")
    dims = sorted(model.dims, reverse=True)
    dim = dim or dims[0]
    if dim not in dims:
        raise DataError(f"--dim {dim}: the model's MRL dims are {', '.join(map(str, dims))}")
    listing = list_source(source, Path(workspace), modality)
    missing = sorted({e.modality for e in listing.entries if e.modality and not e.reject} - set(model.modalities))
    if missing:
        raise DataError(f"the model embeds {', '.join(model.modalities)}, not {', '.join(missing)}: "
                        f"index with --modality {' or '.join(m for m in model.modalities if m != 'text')}")
    def load(modality: str, data: bytes, path: str):
        try:
            return model.load_media(modality, data)
        except MediaError as exc:  # the reject's row names the file; the reason need not name "<bytes>"
            raise MediaError(str(exc).removeprefix("<bytes>: ")) from None

    info = build_index(
        listing, out, model_fingerprint=model.fingerprint, dim=dim, dims=dims, load=load,
        embed=lambda modality, inputs: model.embed_loaded(modality, inputs, dim=dim),
        shard_size=shard_size, batch_size=batch_size, workers=workers, progress=progress,
        max_bytes=getattr(model, "max_file_bytes", MAX_FILE_BYTES),
    )
    if ann and info["counts"]["indexed"]:
        from edge_glass.gallery.ann import build_ann
        from edge_glass.gallery.store import read_embeddings

        info["ann"] = build_ann(read_embeddings(out, info)).save(out)
    finish_index(out, info)
    return info


def main() -> None:
    from edge_glass.cli import run_command

    def body(args):
        from edge_glass.api import load

        model = load(args.model, device=args.device)
        info = run_index(model, args.source, args.out, workspace=args.workspace or args.model, modality=args.modality,
                         dim=args.dim, batch_size=args.batch_size, shard_size=args.shard_size, workers=args.workers,
                         ann=args.ann, progress=not args.no_progress)
        c = info["counts"]
        log.info("%s: %d found = %d indexed + %d rejected (%s); %d other files ignored; %d of %d shards resumed%s",
                 args.out, c["found"], c["indexed"], c["rejected"], Path(args.out) / "rejects.csv", c["ignored"],
                 c["resumed_shards"], info["shards"], "; approximate index built" if info["ann"] else "")

    run_command("index", parser(), body)


if __name__ == "__main__":
    main()
