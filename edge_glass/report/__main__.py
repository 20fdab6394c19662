"""Markdown + PNG report of a pipeline run: retrieval vs baseline, R@1 per MRL dim, loss curves,
caption metrics and samples, and the Perceiver-latents ablation from `dvc exp show`.

    python -m edge_glass.report                 # writes reports/report.md and reports/*.png
    python -m edge_glass.report --out DIR --no-experiments
    python -m edge_glass.report --base-ref origin/main     # + paired comparison with a git revision
    python -m edge_glass.report --html                     # reports/index.html (the `report` stage)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_glass.core.errors import EXIT_DATA
from edge_glass.report.markdown import build_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_glass.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=".", help="repository root (default: .)")
    parser.add_argument("--out", default="reports", help="output folder (default: reports)")
    parser.add_argument("--no-experiments", action="store_true", help="skip `dvc exp show` (ablation section)")
    parser.add_argument("--base-ref", help="git revision to compare with (paired bootstrap per metric)")
    parser.add_argument("--html", action="store_true",
                        help="write OUT/index.html + OUT/assets/ instead: retrieval examples with thumbnails and audio")
    parser.add_argument("--screenshot", help="with --html: also render the page in headless Chromium to this PNG")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--manifest", default="data/download/manifest.parquet")
    parser.add_argument("--model", default="data/align")
    parser.add_argument("--captions", default="data/decode/captions.parquet")
    args = parser.parse_args(argv)
    if args.html:
        from edge_glass.config import load_params
        from edge_glass.core.errors import ParamsError
        from edge_glass.report.html import build_html

        try:
            params = load_params(args.params)
            page = build_html(Path(args.repo), Path(args.out), params, features_dir=Path(args.features),
                              manifest_path=Path(args.manifest), model_dir=Path(args.model), captions_path=Path(args.captions))
        except (FileNotFoundError, ParamsError) as exc:
            print(f"report: {exc}", file=sys.stderr)
            return EXIT_DATA
        print(f"wrote {page}")
        if args.screenshot:
            from edge_glass.report.html import render_in_chromium

            log = render_in_chromium(page, Path(args.screenshot))
            errors = [line for line in log.splitlines() if ":CONSOLE" in line]
            print(f"wrote {args.screenshot}" + (f"; {len(errors)} console messages: {errors[:3]}" if errors else ""))
        return 0
    try:
        report = build_report(Path(args.repo), Path(args.out), not args.no_experiments, args.base_ref)
    except FileNotFoundError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return EXIT_DATA
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
