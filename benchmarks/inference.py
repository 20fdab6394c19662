"""Using the trained model: API embedding and index build vs the preprocess stage, and search at 100k items.

    python benchmarks/inference.py [--model .] [--items 128] [--repeats 3] [--gallery 100000] [--queries 1000]

1. **Embedding throughput** on the same media: ``edge_glass.load(...).embed_images / embed_audio /
   embed_texts`` (raw files in, normalised aligned embeddings out) vs the preprocess stage
   (``preprocess_modality`` over the same items of the workspace's download: load, encode, write shards).
   API and stage alternate within each repeat, so drift hits both; a ratio is median(API items/s) /
   median(stage items/s), from this one run (target >= 0.9).
2. **Index build**: ``python -m edge_glass.index``'s ``run_index`` over a folder of those images and clips,
   items/s vs the stage's image+audio items/s.
3. **Search** over ``--gallery`` synthetic items at the model's largest dim (256 by default; clustered,
   unit-norm, written in the index format with the model's fingerprint): one text query end to end after
   load (embed + exact search + results, ms; target <= 50), ``--queries`` query embeddings searched as one
   batch (s; target <= 2: the search of the batch, its text embedding is reported apart), and recall@10
   of the approximate index (``gallery.ann.build_ann``: faiss HNSW) against exact search, for queries
   drawn as the gallery's items are (a cluster centre plus fresh noise), with both searches' times.

Every timing is repeated: median and IQR (interquartile range) are printed. Needs a workspace after
``dvc repro`` (or an exported model plus ``--workspace`` with a download). Ends with one line
``inference_bench image_ratio=… audio_ratio=… text_ratio=… search_ms=… batch_1000_s=… ann_recall10=…``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402

from edge_glass.config import load_params  # noqa: E402
from edge_glass.data.manifest import media_ref, read_manifest  # noqa: E402
from edge_glass.encoders.registry import build_encoder  # noqa: E402
from edge_glass.gallery.search import Gallery  # noqa: E402
from edge_glass.gallery.store import FORMAT, ROW_FIELDS, finish_index, shard_name, write_shard  # noqa: E402
from edge_glass.index import run_index  # noqa: E402
from edge_glass.preprocess import loader_blas_single_threaded, preprocess_modality  # noqa: E402


def median_iqr(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], 0.0
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return statistics.median(xs), q[2] - q[0]


def fmt(xs: list[float], unit: str = "", scale: float = 1.0, digits: int = 1) -> str:
    m, iqr = median_iqr([x * scale for x in xs])
    return f"{m:.{digits}f}{unit} (IQR {iqr:.{digits}f}, n={len(xs)})"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def subset(manifest: pd.DataFrame, modality: str, n: int) -> pd.DataFrame:
    has = manifest[f"{modality}_shard"].notna() if modality != "text" else manifest["captions"].map(len) > 0
    return manifest[has].head(n)


def extract(manifest: pd.DataFrame, modality: str, base: Path, out: Path) -> list[str]:
    """The subset's media as files (what a user hands the API), named by item."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, row in enumerate(manifest.itertuples(index=False)):
        ref = media_ref(row, modality)
        path = out / f"{k:05d}.{ref.member.rpartition('.')[2]}"
        path.write_bytes(ref.read(base))
        paths.append(str(path))
    return paths


def throughput(model, params, manifest_path: Path, n: int, repeats: int, tmp: Path) -> dict:
    """Per modality: API and stage items/s over the same items, alternating, ``repeats`` times each."""
    manifest = read_manifest(manifest_path)
    base = manifest_path.parent
    out = {}
    for modality in ("image", "audio", "text"):
        if modality not in model.modalities or modality not in params.preprocess.modalities:
            continue
        sub = subset(manifest, modality, n)
        if modality == "text":
            inputs = [c for caps in sub["captions"] for c in caps]
            api = lambda: model.embed_texts(inputs)  # noqa: E731
        else:
            inputs = extract(sub, modality, base, tmp / "files" / modality)
            api = (lambda: model.embed_images(inputs)) if modality == "image" else (lambda: model.embed_audio(inputs))  # noqa: E731
        encoder = build_encoder(modality, params)
        api()  # warm-up: first-call allocations, lazy imports
        stage_s, api_s = [], []
        for r in range(repeats):
            feat = tmp / f"features-{modality}-{r}"

            def stage(feat=feat):
                with loader_blas_single_threaded():
                    preprocess_modality(modality, sub, base, feat, params, encoder)

            stage_s.append(timed(stage))
            api_s.append(timed(api))
            shutil.rmtree(feat, ignore_errors=True)
        items = len(inputs)
        out[modality] = {"items": items, "api": [items / s for s in api_s], "stage": [items / s for s in stage_s],
                         "files": inputs if modality != "text" else None}
    return out


def clustered(centres: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit vectors around random ``centres`` (noise 0.8 of a centre's scale: same-cluster cosine ~0.6)."""
    x = centres[rng.integers(0, len(centres), n)] + 0.8 * rng.standard_normal((n, centres.shape[1])).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic_index(out: Path, n: int, dim: int, fingerprint: str, dims: list[int], seed: int = 0,
                    shard: int = 10000) -> tuple[np.ndarray, dict, np.ndarray]:
    """``n`` clustered unit vectors written in the index format (what ``run_index`` writes for real media);
    returns them, the index info and the cluster centres (to draw in-distribution queries)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 100, 1), dim)).astype(np.float32)
    x = clustered(centres, n, rng)
    rows = []
    for k, start in enumerate(range(0, n, shard)):
        part = x[start : start + shard]
        meta_rows = [[f"synthetic/{i:07d}.png", "image", f"s{i}", f"synthetic/{i:07d}.png", 0, -1]
                     for i in range(start, start + len(part))]
        write_shard(out / "shards" / shard_name(k), part, {"fingerprint": "synthetic", "rows": meta_rows, "rejects": []})
        rows += [{**dict(zip(ROW_FIELDS, r)), "shard": k, "row": j} for j, r in enumerate(meta_rows)]
    pd.DataFrame(rows).to_parquet(out / "rows.parquet", index=False)
    info = {"format": FORMAT, "model_fingerprint": fingerprint, "dim": dim, "dims": sorted({d for d in dims if d <= dim}, reverse=True),
            "root": str(out), "source": "synthetic", "shards": -(-n // shard), "shard_size": shard,
            "counts": {"found": n, "indexed": n, "rejected": 0, "ignored": 0}, "ann": None}
    return x, info, centres


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=".", help="workspace after dvc repro, or an exported model folder")
    parser.add_argument("--workspace", default=None, help="workspace whose download and params the stage uses (default: --model)")
    parser.add_argument("--items", type=int, default=128, help="items per modality for the throughput runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gallery", type=int, default=100_000, help="synthetic gallery size for search")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--search-repeats", type=int, default=30)
    parser.add_argument("--no-ann", action="store_true", help="skip the approximate index (faiss)")
    args = parser.parse_args()

    import torch

    import edge_glass.api as api

    ws = Path(args.workspace or args.model)
    params = load_params(ws / "params.yaml")
    tmp = Path(tempfile.mkdtemp(prefix="eg-inference-"))
    t0 = time.perf_counter()
    model = api.load(args.model)
    load_s = time.perf_counter() - t0
    dim = max(model.dims)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {args.model} loaded in {load_s:.1f} s; "
          f"dims {sorted(model.dims, reverse=True)}; fingerprint {model.fingerprint[:12]}")

    # 1. embedding throughput, API vs stage
    tp = throughput(model, params, ws / "data" / "download" / "manifest.parquet", args.items, args.repeats, tmp)
    print(f"\n{'modality':<8} {'items':>6} {'API items/s':>26} {'stage items/s':>26} {'API/stage':>9}")
    ratios = {}
    for m, r in tp.items():
        ratios[m] = median_iqr(r["api"])[0] / median_iqr(r["stage"])[0]
        print(f"{m:<8} {r['items']:>6} {fmt(r['api']):>26} {fmt(r['stage']):>26} {ratios[m]:>9.2f}")

    # 2. index build over the same images and clips
    gallery_dir = tmp / "gallery"
    for m in ("image", "audio"):
        if m in tp:
            (gallery_dir / m).mkdir(parents=True)
            for f in tp[m]["files"]:
                shutil.copy(f, gallery_dir / m / Path(f).name)
    build = []
    for r in range(args.repeats):
        info = {}
        build.append(timed(lambda r=r, info=info: info.update(run_index(model, str(gallery_dir), tmp / f"idx-{r}",
                                                                         progress=False))))
    n_build = info["counts"]["indexed"]
    stage_rate = sum(tp[m]["items"] for m in ("image", "audio") if m in tp) / sum(
        tp[m]["items"] / median_iqr(tp[m]["stage"])[0] for m in ("image", "audio") if m in tp)
    build_rate = [n_build / s for s in build]
    print(f"\nindex build: {n_build} items ({info['counts']['rejected']} rejected), {fmt(build_rate, ' items/s')}; "
          f"preprocess image+audio {stage_rate:.1f} items/s; index/stage {median_iqr(build_rate)[0] / stage_rate:.2f}")

    # 3. search over a synthetic gallery
    syn = tmp / "synthetic"
    x, info, centres = synthetic_index(syn, args.gallery, dim, model.fingerprint, model.dims)
    finish_index(syn, info)
    gallery = Gallery(syn)
    texts = [f"a photo of thing number {i} on a table" for i in range(args.queries)]
    one = []
    for i in range(args.search_repeats + 1):
        t = time.perf_counter()
        q = model.embed_texts([texts[i % len(texts)]], dim=dim)
        gallery.results(*gallery.search(q, 10))
        one.append(time.perf_counter() - t)
    one = one[1:]  # the first call warms the tokenizer and the matmul
    embed_batch = [timed(lambda: model.embed_texts(texts, dim=dim)) for _ in range(max(1, args.repeats))]
    queries = model.embed_texts(texts, dim=dim)
    batch = [timed(lambda: gallery.search(queries, 10)) for _ in range(max(3, args.repeats))]
    print(f"\nsearch over {args.gallery:,} synthetic {dim}-d items (exact, chunked):")
    print(f"  one text query end to end (embed + search + results): {fmt(one, ' ms', 1e3, 2)}")
    print(f"  {args.queries} query embeddings searched as one batch: {fmt(batch, ' s', 1, 3)}; "
          f"embedding the {args.queries} texts: {fmt(embed_batch, ' s', 1, 3)}")
    recall = float("nan")
    if not args.no_ann:
        from edge_glass.gallery.ann import build_ann

        # in-distribution queries: drawn as the gallery items are (a centre plus fresh noise), not stored items
        probe = clustered(centres, args.queries, np.random.default_rng(1))
        t = time.perf_counter()
        ann = build_ann(x)
        build_s = time.perf_counter() - t
        _, exact = gallery.search(probe, 10)
        exact_s = [timed(lambda: gallery.search(probe, 10)) for _ in range(3)]
        ann_s = [timed(lambda: ann.search(probe, 10)) for _ in range(3)]
        _, approx = ann.search(probe, 10)
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx, exact)]))
        _, exact_text = gallery.search(queries, 10)
        _, approx_text = ann.search(queries, 10)
        recall_text = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx_text, exact_text)]))
        print(f"  approximate ({ann.describe()}): build {build_s:.1f} s; {args.queries} queries "
              f"{fmt(ann_s, ' s', 1, 3)} vs exact {fmt(exact_s, ' s', 1, 3)} "
              f"({median_iqr(exact_s)[0] / median_iqr(ann_s)[0]:.1f}x faster); recall@10 vs exact {recall:.3f} "
              f"(in-distribution queries), {recall_text:.3f} (the text queries: off the synthetic clusters, "
              f"their neighbours are noise)")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"inference_bench image_ratio={ratios.get('image', float('nan')):.2f} audio_ratio={ratios.get('audio', float('nan')):.2f} "
          f"text_ratio={ratios.get('text', float('nan')):.2f} search_ms={median_iqr(one)[0] * 1e3:.1f} "
          f"batch_1000_s={median_iqr(batch)[0]:.3f} ann_recall10={recall:.3f}")


if __name__ == "__main__":
    main()
