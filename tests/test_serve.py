"""python -m edge_glass.serve: the page's endpoints, the gallery-root rule, and the page in headless Chromium.

The browser test drives Debian's chromium through chromium-driver with selenium (offline: no driver
download): it types a query and reads the results list, then uploads a file and reads its caption.
.ci/run installs both (setup.sh --report), and there (CI set) a missing browser fails instead of skipping.
"""

import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers.gallery import FakeModel, gallery_folder

from edge_glass.index import run_index
from edge_glass.serve import App, make_server


class CaptioningFake(FakeModel):
    """The stand-in model with a caption that names what it was given (the real decoder's test is below)."""

    def caption(self, images=None, audio=None, **_):
        files = images if images is not None else audio
        return [f"fake caption of {Path(f).name}" for f in files]


@pytest.fixture()
def served(tmp_path):
    root, _ = gallery_folder(tmp_path)
    model = CaptioningFake()
    run_index(model, str(root), tmp_path / "idx", progress=False)
    server = make_server(App(model, tmp_path / "idx"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def get(url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read(), r.headers.get("Content-Type")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type")


def test_endpoints_search_and_serve_only_indexed_media(served):
    url, root = served
    status, body, _ = get(url + "/api/info")
    assert status == 200 and json.loads(body)["indexed"] == 5
    status, body, _ = get(url + "/api/search?k=3", json.dumps({"text": "a red square"}).encode())
    results = json.loads(body)["results"]
    assert status == 200 and [r["rank"] for r in results] == [1, 2, 3]
    row = next(r for r in results if r["modality"] == "image") if any(r["modality"] == "image" for r in results) else None
    for r in results:
        status, data, mime = get(f"{url}/media/{r['row']}")
        assert status == 200 and data == (root / r["path"]).read_bytes()
        assert mime == ("audio/wav" if r["path"].endswith(".wav") else "image/png")
    if row is not None:
        status, thumb, mime = get(f"{url}/thumb/{row['row']}")
        assert status == 200 and mime == "image/jpeg" and thumb[:2] == b"\xff\xd8"
    for bad in ("/media/99", "/media/-1", "/media/..%2F..%2Fetc%2Fpasswd", "/media/../../etc/passwd", "/etc/passwd"):
        status, body, _ = get(url + bad)
        assert status == 404, bad
    status, body, _ = get(url + "/api/upload?name=notes.txt", b"hello")
    assert status == 400 and "not an image or audio file" in json.loads(body)["error"]
    status, body, _ = get(url + "/api/upload?name=x.png", b"hello")
    error = json.loads(body)["error"]
    assert status == 400 and "image" in error
    assert "x.png: " in error and "/tmp" not in error  # the upload's name, not the server's temp file


def test_upload_returns_the_caption_and_the_same_file_first(served):
    url, root = served
    data = (root / "photos" / "img0.PNG").read_bytes()
    status, body, _ = get(url + "/api/upload?k=2&name=img0.PNG", data)
    out = json.loads(body)
    assert status == 200 and out["caption"] == "fake caption of img0.PNG" and out["modality"] == "image"
    assert out["results"][0]["path"] == "photos/img0.PNG"


def find_browser():
    """Debian's chromium and chromium-driver, or None."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def browser():
    found = find_browser()
    if found is None or not _has_selenium():
        if os.environ.get("CI"):
            pytest.fail("chromium, chromium-driver or selenium missing (.ci/run installs them: bash setup.sh --report)")
        pytest.skip("needs chromium + chromium-driver (apt) and selenium (pip): bash setup.sh --report")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,900"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=found[1]), options=opts)


def _has_selenium():
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False
    return True


def use_page(url, upload: Path, query: str) -> tuple[list[dict], str, list[str]]:
    """Type ``query`` and read the results; then upload ``upload`` and read its caption (and the results)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser()
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "ready")
        box = driver.find_element(By.ID, "q")
        box.send_keys(query, Keys.ENTER)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
        assert driver.find_element(By.ID, "status").text == ""
        results = [{"rank": int(li.get_attribute("data-rank")), "path": li.get_attribute("data-path"),
                    "score": float(li.get_attribute("data-score")),
                    "media": [e.tag_name for e in li.find_elements(By.CSS_SELECTOR, "img, audio")]}
                   for li in driver.find_elements(By.CSS_SELECTOR, "#results li.result")]
        driver.execute_script("document.body.dataset.state = 'waiting'")
        driver.find_element(By.ID, "file").send_keys(str(upload))
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
        assert driver.find_element(By.ID, "status").text == ""
        caption = driver.find_element(By.ID, "caption").text
        after = [li.get_attribute("data-path") for li in driver.find_elements(By.CSS_SELECTOR, "#results li.result")]
        broken = driver.execute_script(
            "return [...document.images].filter(i => i.complete && i.naturalWidth === 0).map(i => i.src)")
        assert not broken, broken  # every thumbnail loaded
        return results, caption, after
    finally:
        driver.quit()


@pytest.mark.slow
def test_page_in_headless_chromium(served):
    url, root = served
    results, caption, after = use_page(url, root / "photos" / "img2.PNG", "a red square")
    assert [r["rank"] for r in results] == list(range(1, 11))[: len(results)] and len(results) == 5
    assert all(r["media"] == (["audio"] if r["path"].endswith(".wav") else ["img"]) for r in results)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert caption == "caption: fake caption of img2.PNG"
    assert after[0] == "photos/img2.PNG"


@pytest.mark.slow
def test_serve_command_with_the_real_model_in_chromium(tiny_workspace, tmp_path):
    """python -m edge_glass.serve as a person starts it: the page's results are the search command's, and
    the caption of an uploaded file is the model's own caption of it."""
    import subprocess
    import sys

    import edge_glass
    from helpers.setup import REPO

    from edge_glass.search import run_search

    root, _ = gallery_folder(tmp_path)
    model = edge_glass.load(tiny_workspace)
    run_index(model, str(root), tmp_path / "idx", progress=False)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "edge_glass.serve", str(tmp_path / "idx"), "--model",
                             str(tiny_workspace)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split("at ", 1)[1].split()[0].rstrip("/")
        upload = root / "photos" / "img1.PNG" if (root / "photos" / "img1.PNG").exists() else root / "photos" / "2024" / "img1.PNG"
        results, caption, after = use_page(url, upload, "a smiling face")
        want = run_search(model, tmp_path / "idx", k=10, text="a smiling face")
        assert [r["path"] for r in results] == [w["path"] for w in want]
        assert [r["score"] for r in results] == pytest.approx([w["score"] for w in want], abs=1e-4)
        words = model.caption(images=[upload])[0]
        assert caption == "caption: " + (words or "(the decoder gave no words)")
        assert after[0] == upload.relative_to(root).as_posix()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
