"""The HTML report: see what the model retrieves and says, with thumbnails and audio, in any browser.

    python -m edge_glass.report --html           # the `report` DVC stage: reports/index.html + reports/assets/

One self-contained page (relative links to ``reports/assets/``; no CDN, no script from elsewhere):
the retrieval table with intervals, the R@1-per-MRL-dim and loss plots, for every retrieval
direction a seeded sample of test queries and the worst failures (true item ranked lowest), each with
its top-k results, scores and the true item marked; generated captions next to their image/audio and
references; the run's params, data counts (rejects by reason) and encoders.

Media come from the tar shards by member offset (``manifest.media_ref``); thumbnails are JPEG with
the long side <= ``report.thumbnail_px``, audio is trimmed to ``report.audio_seconds`` and stored as
Ogg Vorbis: the default run's report is a few MB, bounded by ``report.samples``.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml

from edge_glass.config import Params
from edge_glass.data.manifest import media_ref, read_manifest
from edge_glass.metrics.retrieval import query_ranks

DIRECTIONS = [("image", "text"), ("text", "image"), ("audio", "text"), ("text", "audio"), ("fused", "text")]


class Assets:
    """Thumbnails and clips written once per item under ``assets/``; returns their relative paths."""

    def __init__(self, out: Path, manifest: pd.DataFrame, base_dir: Path, params: Params):
        self.out, self.base_dir, self.cfg = out, base_dir, params.report
        self.rows = {r.item_id: r for r in manifest.itertuples(index=False)}
        self.done: dict[tuple[str, str], str | None] = {}
        (out / "assets" / "img").mkdir(parents=True, exist_ok=True)
        (out / "assets" / "audio").mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _name(item_id: str) -> str:
        return hashlib.sha1(item_id.encode()).hexdigest()[:16]

    def image(self, item_id: str) -> str | None:
        key = (item_id, "image")
        if key not in self.done:
            self.done[key] = self._write_image(item_id)
        return self.done[key]

    def audio(self, item_id: str) -> str | None:
        key = (item_id, "audio")
        if key not in self.done:
            self.done[key] = self._write_audio(item_id)
        return self.done[key]

    def _write_image(self, item_id: str) -> str | None:
        from edge_glass.data.media import load_image

        ref = media_ref(self.rows[item_id], "image")
        if ref is None:
            return None
        img = load_image(ref.read(self.base_dir))
        img.thumbnail((self.cfg.thumbnail_px, self.cfg.thumbnail_px))
        rel = f"assets/img/{self._name(item_id)}.jpg"
        img.save(self.out / rel, format="JPEG", quality=80)
        return rel

    def _write_audio(self, item_id: str) -> str | None:
        import soundfile as sf

        from edge_glass.data.media import load_audio

        ref = media_ref(self.rows[item_id], "audio")
        if ref is None:
            return None
        rate = 16000
        wav = load_audio(ref.read(self.base_dir), rate)[: int(self.cfg.audio_seconds * rate)]
        rel = f"assets/audio/{self._name(item_id)}.ogg"
        buf = io.BytesIO()
        sf.write(buf, wav, rate, format="OGG", subtype="VORBIS")
        (self.out / rel).write_bytes(buf.getvalue())
        return rel


def esc(text) -> str:
    return html.escape(str(text))


def media_html(assets: Assets, item_id: str, show: str) -> str:
    """An item as the page shows it: its image, its audio, or both (fused)."""
    parts = []
    if show in ("image", "fused") and (src := assets.image(item_id)):
        parts.append(f'<img src="{src}" alt="{esc(item_id)}">')
    if show in ("audio", "fused") and (src := assets.audio(item_id)):
        parts.append(f'<audio controls preload="none" src="{src}"></audio>')
    return "".join(parts) or f"<span class=missing>no {show}</span>"


def embeddings(params: Params, features_dir: Path, manifest_path: Path, model_dir: Path):
    """Normalised test-split embeddings at the top MRL dim: {medium: (z, item ids)}, text with caption texts."""
    from edge_glass.features.dataset import FeatureSplit
    from edge_glass.metrics.retrieval import caption_ids, embed_split
    from edge_glass.models.aligner import load_model

    model = load_model(model_dir).eval()
    data = FeatureSplit(features_dir, manifest_path, params.evaluate.split)
    emb = embed_split(model, data)
    top = max(model.cfg.mrl.dims)
    index = {i: n for n, i in enumerate(data.item_ids)}
    out = {m: (F.normalize(z[:, :top], dim=-1), list(o)) for m, (z, o) in emb.items()}
    cap_ids = caption_ids(out["text"][1])
    texts = [data.caption_texts[index[c.rsplit("#", 1)[0]]][int(c.rsplit("#", 1)[1])] for c in cap_ids]
    return out, cap_ids, texts


def direction_section(src: str, dst: str, emb: dict, cap_ids: list[str], texts: list[str], ranks: pd.DataFrame | None,
                      assets: Assets, params: Params) -> str:
    """A seeded sample of queries and the worst failures, each with its top-k results (true ones marked)."""
    if src not in emb or dst not in emb:
        return ""
    zq, own_q = emb[src]
    zg, own_g = emb[dst]
    if src == "text" or dst == "text":
        media = dst if src == "text" else src
        have = set(emb[media][1])
        keep = [i for i, o in enumerate(emb["text"][1]) if o in have]
        if src == "text":
            zq, own_q = zq[keep], [own_q[i] for i in keep]
        else:
            zg, own_g = zg[keep], [own_g[i] for i in keep]
        text_of = [texts[i] for i in keep]
        text_id = [cap_ids[i] for i in keep]
    if not len(own_q) or not len(own_g):
        return ""
    cfg = params.report
    k = min(cfg.top_k, len(own_g))
    sims = zq @ zg.t()
    rng = np.random.default_rng([params.seed, 7, len(src), len(dst)])
    sample = sorted(rng.choice(len(own_q), size=min(cfg.samples, len(own_q)), replace=False).tolist())
    task = f"{src}_to_{dst}"
    true_rank = query_ranks(zq, own_q, zg, own_g)  # the evaluate stage's ranks, ties by gallery index
    worst = [int(i) for i in np.argsort(-true_rank, kind="stable")[: cfg.samples]]
    if ranks is not None:
        recorded = ranks[(ranks.model == "trained") & (ranks.task == task)]
        if len(recorded) == len(true_rank):  # the evaluate stage's ranks, same queries: they must agree
            assert (recorded["rank"].to_numpy() == true_rank).all(), f"{task}: ranks differ from the evaluate stage"

    def label(i: int, side: str, owner: str) -> str:
        if side == "text":
            return f'<div class=caption>{esc(text_of[i])}</div><div class=id>{esc(text_id[i])}</div>'
        return media_html(assets, owner, side) + f"<div class=id>{esc(owner)}</div>"

    def block(q: int) -> str:
        order = torch.sort(sims[q], descending=True, stable=True).indices[:k].tolist()
        cells = []
        for r, g in enumerate(order):
            hit = own_g[g] == own_q[q]
            cells.append(f'<div class="result{" true" if hit else ""}" data-rank="{r}" data-true="{int(hit)}">'
                         f'<div class=score>#{r + 1} · {float(sims[q, g]):.3f}{" ✓" if hit else ""}</div>'
                         f'{label(g, dst, own_g[g])}</div>')
        return (f'<div class=query data-task="{task}" data-true-rank="{int(true_rank[q])}">'
                f'<div class=q>{label(q, src, own_q[q])}<div class=rank>true item at rank {int(true_rank[q]) + 1}</div></div>'
                f'<div class=results>{"".join(cells)}</div></div>')

    return (f'<section id="{task}"><h2>{esc(src)} → {esc(dst)}</h2>'
            f'<h3>Random test queries (seeded)</h3>{"".join(block(q) for q in sample)}'
            f'<h3>Worst failures (true item ranked lowest)</h3>{"".join(block(q) for q in worst)}</section>')


def captions_section(captions_path: Path, assets: Assets, params: Params) -> str:
    if not captions_path.exists():
        return ""
    frame = pd.read_parquet(captions_path)
    rows = frame.sample(n=min(params.report.samples, len(frame)), random_state=params.seed).sort_values("item_id")
    cards = [f'<div class=gen>{media_html(assets, r.item_id, "fused")}<div class=id>{esc(r.item_id)}</div>'
             f'<div class=generated>{esc(r.generated) or "<em>(empty)</em>"}</div>'
             f'<ul>{"".join(f"<li>{esc(x)}</li>" for x in r.references)}</ul></div>' for r in rows.itertuples(index=False)]
    return f'<section id=captions><h2>Generated captions</h2><div class=gens>{"".join(cards)}</div></section>'


def retrieval_html(retrieval: dict) -> str:
    from edge_glass.report.markdown import TASKS, with_interval

    rows = "".join(f"<tr><td>{t}</td><td>{esc(with_interval(retrieval['trained'][t], 'R@1'))}</td>"
                   f"<td>{esc(with_interval(retrieval['trained'][t], 'R@5'))}</td>"
                   f"<td>{esc(with_interval(retrieval['baseline'].get(t), 'R@1'))}</td></tr>"
                   for t in TASKS if t in retrieval["trained"])
    return ("<table><tr><th>task</th><th>R@1 [95% CI]</th><th>R@5 [95% CI]</th><th>baseline R@1 [95% CI]</th></tr>"
            f"{rows}</table>")


def data_html(repo: Path, download_dir: Path, features_dir: Path) -> str:
    parts = []
    download = repo / "metrics" / "download.json"
    if download.exists():
        d = json.loads(download.read_text())
        parts.append(f"<p>{d.get('in')} candidates → {d.get('kept')} kept, {d.get('rejected')} rejected; "
                     f"{d.get('captions')} captions; splits {esc(d.get('splits'))}</p>")
    rejects = download_dir / "rejects.csv"
    if rejects.exists():
        frame = pd.read_csv(rejects)
        if len(frame):
            reasons = frame["reason"].astype(str).str.split(":").str[0].value_counts()
            parts.append("<table><tr><th>reject reason</th><th>items</th></tr>"
                         + "".join(f"<tr><td>{esc(r)}</td><td>{n}</td></tr>" for r, n in reasons.items()) + "</table>")
    encoders = features_dir / "encoders.json"
    if encoders.exists():
        enc = {k: v for k, v in json.loads(encoders.read_text()).items() if isinstance(v, dict)}
        parts.append("<table><tr><th>modality</th><th>encoder</th><th>tokens × dim</th><th>encoded</th></tr>"
                     + "".join(f"<tr><td>{m}</td><td>{esc(e['name'])}</td><td>{e['token_dim']}</td><td>{e.get('encoded')}</td></tr>"
                               for m, e in enc.items()) + "</table>")
    return "".join(parts)


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;font-size:.9em}
.query{display:flex;gap:1em;border-top:1px solid #ddd;padding:.6em 0}.q{width:190px;flex:none}
.results{display:flex;gap:.5em;flex-wrap:wrap}.result{width:150px;border:2px solid transparent;padding:.2em}
.result.true{border-color:#2a2}.score{font-size:.8em;color:#555}.id{font-size:.7em;color:#888;word-break:break-all}
.rank{font-size:.8em;color:#a33}.caption{font-size:.9em}img{max-width:128px;max-height:128px;display:block}
audio{width:145px;height:28px}.gens{display:flex;flex-wrap:wrap;gap:1em}.gen{width:260px}.generated{font-weight:600}
pre{background:#f6f6f6;padding:.6em;font-size:.75em;max-height:24em;overflow:auto}.missing{color:#999;font-size:.8em}
"""

# every image or clip that fails to load is a console error: the browser test reads them
CHECK = """<script>
document.querySelectorAll('img,audio').forEach(function(el){el.addEventListener('error',function(){
console.error('report: failed to load '+el.getAttribute('src'));});});
window.addEventListener('load',function(){document.querySelectorAll('img').forEach(function(img){
if(!img.complete||img.naturalWidth===0){console.error('report: blank image '+img.getAttribute('src'));}});});
</script>"""


def build_html(repo: Path, out: Path, params: Params, *, features_dir: Path, manifest_path: Path, model_dir: Path,
               captions_path: Path) -> Path:
    """Write ``out/index.html`` and ``out/assets/``; returns the page's path."""
    from edge_glass.report.markdown import loss_curve_png, recall_by_dim_png

    repo, out = Path(repo), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    retrieval = json.loads((repo / "metrics" / "retrieval.json").read_text())
    manifest = read_manifest(manifest_path)
    assets = Assets(out, manifest, Path(manifest_path).parent, params)
    emb, cap_ids, texts = embeddings(params, Path(features_dir), Path(manifest_path), Path(model_dir))
    queries = repo / "metrics" / "retrieval_queries.parquet"
    ranks = pd.read_parquet(queries) if queries.exists() else None
    plots = []
    for name, make in (("recall_by_dim", recall_by_dim_png), ("loss_curves", loss_curve_png)):
        if make(repo, out / "assets" / f"{name}.png"):
            plots.append(f'<img class=plot src="assets/{name}.png" alt="{name}" style="max-width:640px;max-height:none">')
    caps = ""
    if (repo / "metrics" / "captions.json").exists():
        from edge_glass.report.markdown import with_interval

        c = json.loads((repo / "metrics" / "captions.json").read_text())
        caps = ("<table><tr><th>caption metric</th><th>value [95% CI]</th></tr>"
                + "".join(f"<tr><td>{k}</td><td>{esc(with_interval(c, k))}</td></tr>"
                          for k in ("BLEU-4", "CIDEr-D", "embedding_similarity", "exact_match") if k in c) + "</table>")
    nav = " · ".join(f'<a href="#{s}_to_{d}">{s}→{d}</a>' for s, d in DIRECTIONS) + ' · <a href="#captions">captions</a>'
    body = [f"<h1>edge_glass report</h1><p>{nav}</p>",
            f"<p>Split <b>{esc(retrieval['split'])}</b>, {retrieval['items']} items; top MRL dim; intervals are "
            "bootstrap 95% over the test items (an item's queries resampled together). Results marked ✓ (green) are the query's true item.</p>",
            retrieval_html(retrieval), caps, *plots,
            *(direction_section(s, d, emb, cap_ids, texts, ranks, assets, params) for s, d in DIRECTIONS),
            captions_section(Path(captions_path), assets, params),
            "<section id=data><h2>Data and encoders</h2>", data_html(repo, Path(manifest_path).parent, Path(features_dir)),
            "</section><section id=params><h2>Params</h2>",
            f"<pre>{esc(yaml.safe_dump(params.model_dump(), sort_keys=False))}</pre></section>"]
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>edge_glass report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}{CHECK}</body></html>")
    path = out / "index.html"
    path.write_text(page)
    return path


def find_chromium() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


def render_in_chromium(page: Path, screenshot: Path, browser: str | None = None, size: str = "1280,2400") -> str:
    """Open ``page`` in headless Chromium, save a screenshot; returns Chromium's log, where every
    console message of the page appears as a ``:CONSOLE`` line (the page logs each broken image/clip)."""
    import subprocess

    browser = browser or find_chromium()
    if browser is None:
        raise FileNotFoundError("chromium not installed: apt-get install chromium (bash setup.sh --report)")
    proc = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                           "--hide-scrollbars", "--virtual-time-budget=5000", f"--screenshot={Path(screenshot).resolve()}",
                           f"--window-size={size}", Path(page).resolve().as_uri()], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium failed ({proc.returncode}): {proc.stderr[-1000:]}")
    return proc.stderr
