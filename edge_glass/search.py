"""``python -m edge_glass.search DIR --text "..." | --image FILE | --audio FILE``: the gallery's best matches.

Prints rank, cosine and path (relative to the gallery root) of the top ``-k``; ``--json`` prints one
object per line, exactly ``{"rank": 1, "path": "...", "score": 0.42}``. An index built by another model
is refused (its embeddings live in another space). Exact search by default; ``--ann`` uses the
approximate index when the index was built with ``--ann``. docs/search.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge_glass.search", description=__doc__.split("\n\n")[0])
    p.add_argument("index", help="an index folder written by python -m edge_glass.index")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="a text query")
    q.add_argument("--image", help="an image file as the query")
    q.add_argument("--audio", help="an audio file as the query")
    p.add_argument("-k", type=int, default=10, help="how many results (default 10)")
    p.add_argument("--dim", type=int, default=None, help="search at this MRL dim (default: the index's dim)")
    p.add_argument("--json", action="store_true", help="one JSON object per line: rank, path, score")
    p.add_argument("--ann", action="store_true", help="use the approximate index (built with index --ann)")
    p.add_argument("--model", default=".", help="the model that built the index (default: .)")
    p.add_argument("--device", default="cpu")
    return p


def format_results(results: list[dict], as_json: bool) -> str:
    if as_json:
        return "".join(json.dumps({"rank": r["rank"], "path": r["path"], "score": round(r["score"], 6)}) + "\n"
                       for r in results)
    return "".join(f"{r['rank']:>4}  {r['score']:+.4f}  {r['path']}\n" for r in results)


def run_search(model, index_dir: str | Path, *, k: int = 10, dim: int | None = None, ann: bool = False,
               **query) -> list[dict]:
    """Open the index, check the model, embed the query and return its ranked results."""
    from edge_glass.core.errors import DataError
    from edge_glass.gallery.search import Gallery, embed_query

    if k < 1:
        raise DataError("-k must be >= 1")
    gallery = Gallery(index_dir)
    gallery.check_model(model.fingerprint)
    dim = gallery.search_dim(dim)
    q = embed_query(model, dim=dim, **query)
    return gallery.results(*gallery.search(q, k, dim, ann=ann))[0]


def main() -> None:
    from edge_glass.cli import run_command

    def body(args):
        from edge_glass.api import load
        from edge_glass.gallery.store import read_info

        from edge_glass.core.errors import DataError

        info = read_info(args.index)  # a missing or unfinished index fails before a model is loaded
        if args.k < 1:  # so do the options the index can answer without the model
            raise DataError("-k must be >= 1")
        if args.ann and info.get("ann") is None:
            raise DataError(f"{args.index} has no approximate index: build it with python -m edge_glass.index ... --ann")
        model = load(args.model, device=args.device)
        results = run_search(model, args.index, k=args.k, dim=args.dim, ann=args.ann,
                             text=args.text, image=args.image, audio=args.audio)
        sys.stdout.write(format_results(results, args.json))

    run_command("search", parser(), body)


if __name__ == "__main__":
    main()
