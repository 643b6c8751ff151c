"""The search page in headless Chromium (Debian's chromium + chromium-driver, via Selenium)
against a real `python -m server` on 127.0.0.1. Run with `make test-ui` (marker `ui`).

MOCO_UI_CHECKPOINT and MOCO_UI_INDEX point it at an existing checkpoint and index instead
of a tiny fresh one; MOCO_UI_SCREENSHOT saves the page after the upload search there
(docs/img/search-page.png is made that way, see docs/SERVING.md).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image
from support import Server, build_index, headless_chromium, train_tiny

from trainer.evaluate.cli import main as evaluate_main

pytestmark = pytest.mark.ui

WAIT_S = 60
MAX_PIXELS = 128 * 128  # above every indexed thumbnail, below the "too large" upload


@pytest.fixture(scope="module")
def server(tiny_dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui")
    checkpoint = os.environ.get("MOCO_UI_CHECKPOINT")
    index = os.environ.get("MOCO_UI_INDEX")
    if checkpoint and index:
        # A copy: the test never changes the caller's index (the server may compact it).
        index = shutil.copytree(index, tmp / "index")
    else:
        checkpoint = train_tiny(tiny_dataset, tmp / "run")
        # The evaluation beside the checkpoint is what the build stores for GET /v1/dims.
        evaluate = ["--checkpoint", str(checkpoint), "--dataset", tiny_dataset, "--no-plot"]
        evaluate_main([*evaluate, "--output", str(checkpoint.parent / "eval.json")])
        index = build_index(checkpoint, tiny_dataset, tmp / "index", limit=120)
    srv = Server(checkpoint, index, tmp, MOCO_READ_ONLY="true", MOCO_MAX_PIXELS=str(MAX_PIXELS))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    driver = headless_chromium()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def query_png(server, tmp_path_factory) -> Path:
    """A random indexed item's thumbnail, saved as a PNG file to upload."""
    item = httpx.get(server.url + "/v1/items?sample=1").json()["items"][0]["id"]
    thumb = httpx.get(f"{server.url}/v1/items/{item}/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    path = tmp_path_factory.mktemp("upload") / f"{item}.png"
    Image.open(io.BytesIO(thumb.content)).save(path)
    return path


def api_ids(server, path: Path, dim: int, rerank_dim: int | None = None) -> list[str]:
    """What the API answers for this file: the page must show exactly that."""
    image = base64.b64encode(path.read_bytes()).decode()
    vec = httpx.post(server.url + "/v1/embed", json={"images": [image]}).json()["embeddings"]
    body = {"vectors": vec, "dim": dim, "k": 10, "rerank_dim": rerank_dim}
    hits = httpx.post(server.url + "/v1/search", json=body).json()["results"][0]
    return [h["id"] for h in hits]


def wait_for(browser, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT_S, poll_frequency=0.1).until(condition, message=what)


def console_errors(browser) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def columns(browser) -> list[dict]:
    """Each column's title, stats line, hit ids and agreement marks, once none is busy."""
    return browser.execute_script(
        """
        return [...document.querySelectorAll('#columns .column')].map(c => ({
          title: c.querySelector('h2').textContent,
          busy: c.classList.contains('busy'),
          stats: c.querySelector('.stats').textContent,
          ids: [...c.querySelectorAll('.hit')].map(h => h.dataset.id),
          agree: [...c.querySelectorAll('.hit')].map(h => h.classList.contains('agree')),
          thumbs: [...c.querySelectorAll('.hit img')]
            .filter(i => i.complete && i.naturalWidth > 0).length,
        }));"""
    )


def filled(browser, k: int):
    cols = columns(browser)
    done = cols and all(not c["busy"] and len(c["ids"]) == k and c["thumbs"] == k for c in cols)
    return cols if done else False


def open_page(browser, server) -> None:
    browser.get_log("browser")  # drain: earlier tests' expected 4xx responses are logged
    browser.get(server.url + "/")
    wait_for(
        browser,
        lambda b: "nesting dims" in b.find_element("id", "model-info").text,
        "model info shown",
    )


def upload(browser, path: Path) -> None:
    browser.find_element("id", "file").send_keys(str(path))


def test_page_loads_with_csp_and_no_console_errors(browser, server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    open_page(browser, server)
    wait_for(browser, lambda b: b.find_element("id", "chart-note").text, "chart or its note")
    boxes = browser.find_elements("css selector", "#dims input")
    model = httpx.get(server.url + "/v1/model").json()
    assert [int(b.get_attribute("value")) for b in boxes] == model["nesting_list"]
    assert browser.find_element("id", "error").get_attribute("hidden") is not None
    assert console_errors(browser) == []


def test_quality_chart_from_v1_dims(browser, server):
    dims = httpx.get(server.url + "/v1/dims").json()["dims"]
    open_page(browser, server)
    wait_for(browser, lambda b: b.find_elements("css selector", "#chart polyline"), "chart")
    for cls, key in (("knn", "knn_top1"), ("map", "map_at_k")):
        line = browser.find_element("css selector", f"#chart polyline.{cls}")
        points = line.get_attribute("points").split()
        assert len(points) == len(dims)
        # higher metric, higher on screen (smaller y): the chart's order is the data's order
        ys = [float(p.split(",")[1]) for p in points]
        values = [d[key] for d in dims]
        for i in range(len(dims) - 1):
            if values[i] != values[i + 1]:
                assert (ys[i] > ys[i + 1]) == (values[i] < values[i + 1])
    assert "eval.json" in browser.find_element("id", "chart-note").text


def test_output_type_chart_from_v1_dims(browser, server):
    rows = httpx.get(server.url + "/v1/dims").json()["dtypes"]
    nesting = httpx.get(server.url + "/v1/model").json()["nesting_list"]
    open_page(browser, server)
    wait_for(browser, lambda b: b.find_elements("css selector", "#chart-dtypes polyline"), "chart")
    lines = browser.find_elements("css selector", "#chart-dtypes polyline")
    drawn = {line.get_attribute("data-dtype"): line for line in lines}
    assert set(drawn) == {"float", "float16", "int8", "binary", "binary+rerank"}
    for dtype, line in drawn.items():
        points = [tuple(map(float, p.split(","))) for p in line.get_attribute("points").split()]
        assert len(points) == len(nesting)
        xs = [p[0] for p in points]
        assert xs == sorted(xs)  # bytes grow with the dim
        maps = [
            r["map_at_k"] for r in sorted(rows, key=lambda r: r["bytes"]) if r["dtype"] == dtype
        ]
        assert len(maps) == len(nesting)
    assert "output_dtype" in browser.find_element("id", "chart-dtypes-note").text
    assert console_errors(browser) == []


def test_upload_fills_every_column(browser, server, query_png):
    open_page(browser, server)
    upload(browser, query_png)
    cols = wait_for(browser, lambda b: filled(b, 10), "every column filled")
    nesting = httpx.get(server.url + "/v1/model").json()["nesting_list"]
    small, middle, full = nesting[0], nesting[(len(nesting) - 1) // 2], nesting[-1]
    runs = [(small, None), (middle, None), (full, None), (small, full)]
    assert [c["title"] for c in cols] == [
        f"dim {small}",
        f"dim {middle}",
        f"dim {full}",
        f"adaptive {small} → {full}",
    ]
    reference = set(cols[2]["ids"])
    for col, (dim, rerank) in zip(cols, runs, strict=True):
        assert col["ids"] == api_ids(server, query_png, dim, rerank), col["title"]
        assert col["agree"] == [i in reference for i in col["ids"]]
        assert "server " in col["stats"] and " ms" in col["stats"]
        assert f"recall@10 vs {full}: {sum(col['agree']) / 10:.2f}" in col["stats"]
    assert all(cols[2]["agree"])
    if shot := os.environ.get("MOCO_UI_SCREENSHOT"):
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(shot)
    assert console_errors(browser) == []


def test_clicking_a_result_searches_by_it(browser, server, query_png):
    open_page(browser, server)
    upload(browser, query_png)
    before = wait_for(browser, lambda b: filled(b, 10), "first search")
    target = before[2]["ids"][3]
    full_column = browser.find_elements("css selector", "#columns .column")[2]
    full_column.find_element("css selector", f'.hit[data-id="{target}"]').click()
    after = wait_for(
        browser,
        lambda b: (c := filled(b, 10)) and c[2]["ids"][0] == target and c,
        "search by the clicked item",
    )
    assert target in browser.find_element("id", "query-caption").text
    assert after[2]["ids"] != before[2]["ids"]
    assert console_errors(browser) == []


def test_random_item_button(browser, server):
    open_page(browser, server)
    browser.find_element("id", "random").click()
    cols = wait_for(browser, lambda b: filled(b, 10), "random item searched")
    caption = browser.find_element("id", "query-caption").text
    assert caption.startswith(f"item {cols[2]['ids'][0]} ")


def test_a_non_image_file_shows_an_error(browser, server, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not an image\n")
    open_page(browser, server)
    upload(browser, bad)
    box = error_shown(browser)
    assert "Unsupported file" in box.text and "not an image" in box.text
    assert browser.find_element("id", "model-info").is_displayed()


def error_shown(browser):
    return wait_for(
        browser,
        lambda b: (e := b.find_element("id", "error")).is_displayed() and e,
        "error shown",
    )


def test_too_large_an_image_shows_an_error(browser, server, tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (200, 200), (30, 120, 200)).save(big)
    open_page(browser, server)
    upload(browser, big)
    text = error_shown(browser).text
    assert text.startswith("Too large:") and f"the limit is {MAX_PIXELS}" in text


def test_a_server_without_an_index_says_so(browser, server, tmp_path):
    bare = Server(server.checkpoint, None, tmp_path)  # the same model, no --index-dir
    try:
        open_page(browser, bare)
        assert "no index" in browser.find_element("id", "model-info").text
        assert "No index" in error_shown(browser).text
        assert not browser.find_element("id", "random").is_enabled()
        assert console_errors(browser) == []
    finally:
        bare.stop()


def test_filter_box_recall_target_column_and_calibration_table(browser, server, query_png):
    from selenium.webdriver.support.ui import Select

    open_page(browser, server)
    wait_for(browser, lambda b: b.find_element("id", "calibration").is_displayed(), "table")
    rows = browser.find_elements("css selector", "#calibration-table tbody tr")
    table = httpx.get(server.url + "/v1/dims").json()["calibration"]
    assert len(rows) == len(table["settings"]) >= 1
    label = httpx.get(server.url + "/v1/items/train-0").json()["label"]
    browser.find_element("id", "filter").send_keys(json.dumps({"field": "label", "eq": label}))
    Select(browser.find_element("id", "k")).select_by_visible_text("5")
    Select(browser.find_element("id", "recall-target")).select_by_visible_text("0.99")
    upload(browser, query_png)
    cols = wait_for(browser, lambda b: filled(b, 5), "filtered columns filled")
    assert cols[-1]["title"] == "recall target 0.99"
    assert "calibrated 1.000" in cols[-1]["stats"]  # a small index: exact is the only row
    for col in cols:
        assert "match" in col["stats"], col["stats"]  # the route and the filter's matches
        for item in col["ids"]:
            assert httpx.get(f"{server.url}/v1/items/{item}").json()["label"] == label
    browser.find_element("id", "filter").clear()
    browser.find_element("id", "filter").send_keys("{not json")
    browser.find_element("id", "k").click()  # blur: a change event
    wait_for(browser, lambda b: "not valid JSON" in b.find_element("id", "error").text, "error")
