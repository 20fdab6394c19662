"""Paired comparison of two evaluated runs: is a change outside the noise of the test set?

    python -m edge_glass.compare --base-ref origin/main          # this workspace vs a git revision
    python -m edge_glass.compare --base DIR --new DIR            # two metrics/ folders

Reads the per-query ranks (``metrics/retrieval_queries.parquet``) and per-item caption statistics
(``metrics/caption_items.parquet``) that the evaluate stage writes, pairs the two runs on the same
queries, and for every metric gives new − base with a paired bootstrap 95% interval over the test
items: each resample draws the same items for both runs and weights every query of an item by its
draw count. A row whose interval excludes 0 is marked ✱ (a change the test set can tell from chance).
Writes a markdown table (``--out``) that the PR workflow appends to its comment, and prints it.

Runs that scored different test items are not comparable: when their ``test_items_sha256``
(``metrics/retrieval.json``) differ, or, for a run written before that key existed, their query sets
differ, it exits with code 4 and a message naming the items that differ (also written to ``--out``).
Queries or caption items that only one run has are listed under the table, never dropped silently.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_glass.core.errors import EXIT_NOT_COMPARABLE, EXIT_PARAMS
from edge_glass.metrics.bootstrap import (
    RESAMPLES,
)
from edge_glass.metrics.paired import (
    NotComparable,
    compare,
    markdown,
    not_comparable_markdown,
)

NOT_COMPARABLE = EXIT_NOT_COMPARABLE  # exit code: the runs scored different test items (core.errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    side = parser.add_mutually_exclusive_group(required=True)
    side.add_argument("--base-ref", help="git revision of the base run (its committed metrics/)")
    side.add_argument("--base", type=Path, help="repository folder of the base run")
    parser.add_argument("--new", type=Path, default=Path("."), help="repository folder of the new run (default: here)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    title = f"Paired comparison vs {args.base_ref or args.base}"
    try:
        text, code = markdown(compare(args.new, args.base, args.base_ref, args.resamples, args.seed), title), 0
    except NotComparable as exc:
        text, code = not_comparable_markdown(str(exc), title), NOT_COMPARABLE
        print(f"compare: not comparable: {exc}", file=sys.stderr)
    except ValueError as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return EXIT_PARAMS
    print(text)
    if args.out:
        args.out.write_text(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
