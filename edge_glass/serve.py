"""``python -m edge_glass.serve DIR``: a local search page over a gallery index.

A person types a query or drops an image/audio file and sees the top-k thumbnails (audio with a player)
and their cosines; a dropped file also gets the trained decoder's caption. One stdlib HTTP server and
one HTML page with plain JavaScript: no CDN, no framework, works offline. Media are served by row
number of the index only, each read through the gallery's checks (inside the gallery root), so no
request can name a path. Bound to 127.0.0.1 by default. docs/search.md.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import tempfile
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

log = logging.getLogger(__name__)

MAX_UPLOAD = 64 * 2**20
THUMB_PX = 224
MIME = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp",
        "flac": "audio/flac", "wav": "audio/wav", "mp3": "audio/mpeg", "ogg": "audio/ogg"}

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edge_glass search</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;background:#fafafa}
header{display:flex;gap:.5rem;align-items:center;flex-wrap:wrap}
#q{flex:1;min-width:16rem;font-size:1.1rem;padding:.4rem}
#drop{margin:1rem 0;padding:1.2rem;border:2px dashed #999;border-radius:8px;text-align:center;color:#555}
#drop.over{border-color:#2a6;background:#efe}
#caption{font-style:italic;margin:.5rem 0;min-height:1.2em}
#status{color:#a22;min-height:1.2em}
#results{display:flex;flex-wrap:wrap;gap:1rem;list-style:none;padding:0}
.result{width:230px;background:#fff;border:1px solid #ddd;border-radius:6px;padding:.4rem}
.result img{width:100%;height:auto;display:block}
.result audio{width:100%}
.meta{font-size:.8rem;word-break:break-all}
.score{font-weight:bold}
</style></head><body>
<header><input id="q" type="search" placeholder="describe what you look for" autofocus>
<label>k <input id="k" type="number" value="10" min="1" max="200" style="width:4rem"></label>
<label>dim <select id="dim"></select></label><button id="go">Search</button></header>
<div id="drop">drop an image or audio file here, or <input id="file" type="file" accept="image/*,audio/*"></div>
<div id="caption"></div><div id="status"></div><div id="info"></div>
<ol id="results"></ol>
<script>
const $ = (id) => document.getElementById(id);
async function call(url, opts) {
  const r = await fetch(url, opts);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}
function params() { return "k=" + encodeURIComponent($("k").value) + "&dim=" + encodeURIComponent($("dim").value); }
function show(results) {
  const ol = $("results");
  ol.replaceChildren();
  for (const r of results) {
    const li = document.createElement("li");
    li.className = "result";
    li.dataset.rank = r.rank; li.dataset.path = r.path; li.dataset.score = r.score;
    if (r.modality === "image") {
      const img = document.createElement("img");
      img.src = "/thumb/" + r.row; img.alt = r.path; li.append(img);
    } else {
      const a = document.createElement("audio");
      a.controls = true; a.preload = "none"; a.src = "/media/" + r.row; li.append(a);
    }
    const m = document.createElement("div");
    m.className = "meta";
    m.innerHTML = "<span class=score></span> <span class=path></span>";
    m.querySelector(".score").textContent = r.rank + ". " + r.score.toFixed(3);
    m.querySelector(".path").textContent = r.path;
    li.append(m); ol.append(li);
  }
  document.body.dataset.state = "done";
}
async function searchText() {
  const text = $("q").value.trim();
  if (!text) return;
  document.body.dataset.state = "busy"; $("status").textContent = ""; $("caption").textContent = "";
  try { show((await call("/api/search?" + params(), {method: "POST", headers: {"Content-Type": "application/json"},
                                                    body: JSON.stringify({text})})).results); }
  catch (e) { $("status").textContent = e.message; document.body.dataset.state = "error"; }
}
async function searchFile(file) {
  document.body.dataset.state = "busy"; $("status").textContent = ""; $("caption").textContent = "captioning…";
  try {
    const body = await call("/api/upload?" + params() + "&name=" + encodeURIComponent(file.name),
                            {method: "POST", body: file});
    $("caption").textContent = body.caption === null ? "no caption: this model has no decoder"
                               : "caption: " + (body.caption || "(the decoder gave no words)");
    show(body.results);
  } catch (e) { $("caption").textContent = ""; $("status").textContent = e.message; document.body.dataset.state = "error"; }
}
$("go").onclick = searchText;
$("q").addEventListener("keydown", (e) => { if (e.key === "Enter") searchText(); });
$("file").addEventListener("change", () => { if ($("file").files.length) searchFile($("file").files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over");
                                       if (e.dataTransfer.files.length) searchFile(e.dataTransfer.files[0]); });
call("/api/info").then((info) => {
  for (const d of info.dims) { const o = document.createElement("option"); o.value = d; o.textContent = d; $("dim").append(o); }
  $("info").textContent = info.indexed + " items indexed from " + info.source;
  document.body.dataset.state = "ready";
}).catch((e) => { $("status").textContent = e.message; });
</script></body></html>
"""


class App:
    """The search logic behind the page: one model and one opened index, shared by the request threads."""

    def __init__(self, model, index_dir: str | Path):
        from edge_glass.gallery.search import Gallery

        self.model = model
        self.gallery = Gallery(index_dir)
        self.gallery.check_model(model.fingerprint)
        self.lock = threading.Lock()  # one inference at a time: the CPU is the bottleneck, not the threads

    def info(self) -> dict:
        i = self.gallery.info
        return {"indexed": i["counts"]["indexed"], "dims": i["dims"], "dim": i["dim"], "source": i["source"]}

    def search_text(self, text: str, k: int, dim: int | None) -> dict:
        from edge_glass.gallery.search import embed_query

        dim = self.gallery.search_dim(dim)
        with self.lock:
            q = embed_query(self.model, text=text, dim=dim)
        return {"results": self.gallery.results(*self.gallery.search(q, k, dim))[0]}

    def search_file(self, data: bytes, name: str, k: int, dim: int | None) -> dict:
        """Embed and caption an uploaded image or audio file (its kind from the name's extension)."""
        from edge_glass.core.errors import DataError, MediaError
        from edge_glass.gallery.listing import modality_of
        from edge_glass.gallery.search import embed_query

        kind = modality_of(name)
        if kind is None:
            raise DataError(f"{name}: not an image or audio file by its extension ({', '.join(sorted(MIME))})")
        if kind not in self.model.modalities:
            raise DataError(f"{name}: this model does not embed {kind}")
        dim = self.gallery.search_dim(dim)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(name).name
            path.write_bytes(data)
            with self.lock:
                try:
                    q = embed_query(self.model, dim=dim, **{kind: str(path)})
                except (DataError, MediaError) as exc:  # name the upload, not the temporary file
                    raise DataError(str(exc).replace(str(path), Path(name).name)) from None
                caption = self._caption(kind, str(path))
        return {"modality": kind, "caption": caption, "results": self.gallery.results(*self.gallery.search(q, k, dim))[0]}

    def _caption(self, kind: str, path: str) -> str | None:
        """The decoder's caption, or None when the model has no decoder (it still searches)."""
        from edge_glass.core.errors import DataError, ModelError

        try:
            return self.model.caption(**{"images" if kind == "image" else "audio": [path]})[0]
        except (ModelError, DataError, FileNotFoundError) as exc:
            log.warning("no caption: %s", exc)
            return None

    def media(self, row: int) -> tuple[bytes, str]:
        from edge_glass.gallery.listing import Entry, read_entry

        rows = self.gallery.rows
        if not 0 <= row < len(rows):
            raise KeyError(row)
        r = rows.iloc[row]
        entry = Entry(r["path"], r["modality"], r["item_id"], r["file"], int(r["offset"]), int(r["size"]))
        data = read_entry(self.gallery.root, entry)  # inside the gallery root, checked again now
        return data, _mime(data, r["path"], r["modality"])

    def thumbnail(self, row: int) -> tuple[bytes, str]:
        from PIL import Image

        data, mime = self.media(row)
        if not mime.startswith("image/"):
            return data, mime
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (THUMB_PX, THUMB_PX))
            img = img.convert("RGB")
            img.thumbnail((THUMB_PX, THUMB_PX))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=85)
        return buf.getvalue(), "image/jpeg"


def _mime(data: bytes, path: str, modality: str) -> str:
    ext = path.rpartition(".")[2].casefold()
    if ext in MIME:
        return MIME[ext]
    for magic, mime in ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"fLaC", "audio/flac"),
                        (b"RIFF", "audio/wav"), (b"OggS", "audio/ogg")):
        if data.startswith(magic):
            return mime
    return "application/octet-stream"


def make_handler(app: App):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # request lines at debug level, not on stderr
            log.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, status: int, body: bytes, mime: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", mime)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj, status: int = 200) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def _error(self, status: int, message: str) -> None:
            self._json({"error": message}, status)

        def _query(self) -> tuple[dict, int, int | None]:
            q = {k: v[-1] for k, v in parse_qs(urlparse(self.path).query).items()}
            k = max(1, min(int(q.get("k") or 10), 200))
            dim = int(q["dim"]) if q.get("dim") else None
            return q, k, dim

        def do_GET(self):
            url = urlparse(self.path)
            try:
                if url.path == "/":
                    return self._send(200, PAGE.encode(), "text/html; charset=utf-8")
                if url.path == "/api/info":
                    return self._json(app.info())
                for prefix, fn in (("/media/", app.media), ("/thumb/", app.thumbnail)):
                    if url.path.startswith(prefix):
                        body, mime = fn(int(url.path[len(prefix):]))
                        return self._send(200, body, mime)
                return self._error(HTTPStatus.NOT_FOUND, f"no such page: {url.path}")
            except (KeyError, ValueError):
                return self._error(HTTPStatus.NOT_FOUND, f"no such item: {url.path}")
            except Exception as exc:  # a bad file in the gallery: that item fails, the server goes on
                log.warning("%s: %s", url.path, exc)
                return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc))

        def do_POST(self):
            from edge_glass.core.errors import DataError, MediaError

            url = urlparse(self.path)
            try:
                n = int(self.headers.get("Content-Length") or 0)
                if n > MAX_UPLOAD:
                    return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"upload over {MAX_UPLOAD // 2**20} MiB")
                body = self.rfile.read(n)
                q, k, dim = self._query()
                if url.path == "/api/search":
                    text = str(json.loads(body or b"{}").get("text", "")).strip()
                    if not text:
                        return self._error(HTTPStatus.BAD_REQUEST, "empty query")
                    return self._json(app.search_text(text, k, dim))
                if url.path == "/api/upload":
                    return self._json(app.search_file(body, q.get("name", "upload"), k, dim))
                return self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: {url.path}")
            except (DataError, MediaError, ValueError) as exc:
                return self._error(HTTPStatus.BAD_REQUEST, str(exc))
            except Exception as exc:  # any other fault fails this request with its message; the server goes on
                log.warning("%s: %s", url.path, exc)
                return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc))

    return Handler


def make_server(app: App, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(app))
    server.daemon_threads = True
    return server


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge_glass.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("index", help="an index folder written by python -m edge_glass.index")
    p.add_argument("--model", default=".", help="the model that built the index (default: .)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: any free port, printed at start)")
    p.add_argument("--device", default="cpu")
    return p


def main() -> None:
    from edge_glass.cli import run_command

    def body(args):
        from edge_glass.api import load
        from edge_glass.gallery.store import read_info

        read_info(args.index)
        app = App(load(args.model, device=args.device), args.index)
        server = make_server(app, args.host, args.port)
        host, port = server.server_address[:2]
        print(f"serving {app.info()['indexed']} items at http://{host}:{port}/ (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()

    run_command("serve", parser(), body)


if __name__ == "__main__":
    sys.exit(main())
