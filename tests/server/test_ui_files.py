"""A user's photo folder in headless Chromium, with the internet cut off: the search page shows
each hit's file name beside its thumbnail, and /docs and /redoc render from the packaged
assets. Run with `make test-ui` (marker `ui`)."""

from __future__ import annotations

import httpx
import pytest
from support import Server, headless_chromium, train_on_folder, write_image_folder

from trainer.build_index import IndexBuildConfig, build_index_folder

pytestmark = pytest.mark.ui

WAIT_S = 60
# Every request that is not to this machine goes to a closed port: the page is offline.
OFFLINE = ("--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui-files")
    folder = write_image_folder(tmp / "photos")
    checkpoint = train_on_folder(folder, tmp / "run")
    cfg = IndexBuildConfig(
        checkpoint=checkpoint, dataset=str(folder), out=tmp / "index", split="all", batch_size=16
    )
    build_index_folder(cfg)
    srv = Server(checkpoint, tmp / "index", tmp, MOCO_READ_ONLY="true")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    driver = headless_chromium(*OFFLINE)
    yield driver
    driver.quit()


def wait_for(browser, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT_S, poll_frequency=0.1).until(condition, message=what)


def console_errors(browser) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def full_dim_column(browser) -> list[dict] | bool:
    """The first column's hits (id, file name, meta line, thumbnail loaded) once filled."""
    hits = browser.execute_script(
        """
        const c = document.querySelector('#columns .column');
        if (!c || c.classList.contains('busy')) return null;
        return [...c.querySelectorAll('.hit')].map(h => ({
          id: h.dataset.id,
          file: h.querySelector('.file').textContent,
          meta: h.querySelector('.meta').textContent,
          thumb: h.querySelector('img') !== null && h.querySelector('img').complete
            && h.querySelector('img').naturalWidth > 0,
        }));"""
    )
    return hits if hits and all(h["thumb"] for h in hits) else False


def test_page_shows_file_names_and_thumbnails_of_the_photos(browser, server):
    browser.get_log("browser")
    browser.get(server.url + "/")
    wait_for(browser, lambda b: "nesting dims" in b.find_element("id", "model-info").text, "model")
    browser.find_element("css selector", "#dims input[value='32']").click()
    browser.find_element("id", "random").click()
    hits = wait_for(browser, full_dim_column, "the first column filled with thumbnails")
    assert len(hits) == 10
    for hit in hits:
        item = httpx.get(f"{server.url}/v1/items/{hit['id']}").json()
        path = item["metadata"]["path"]
        assert hit["file"] == path and path.split("/")[0] in ("brick", "cat", "sky")
        assert path.endswith((".png", ".jpg")) and hit["id"] == path.replace("/", ":")
        assert " · p" in hit["meta"]  # the percentile beside the score
    caption = browser.find_element("id", "query-caption").text
    assert "/img_" in caption
    assert console_errors(browser) == []


@pytest.mark.parametrize(
    ("page", "rendered"),
    [
        ("/docs", "return document.querySelectorAll('.swagger-ui .opblock').length"),
        ("/redoc", "return document.querySelectorAll('[data-section-id^=\"operation\"]').length"),
    ],
)
def test_api_docs_render_offline(browser, server, page, rendered):
    browser.get_log("browser")
    browser.get(server.url + page)
    count = wait_for(
        browser, lambda b: b.execute_script(rendered) > 5 and b.execute_script(rendered), page
    )
    assert count > 5
    assert "MoCo-Matryoshka" in browser.page_source
    assert "/v1/search/files" in browser.page_source
    # Redoc's sidebar credit always asks for its logo from its CDN; the page's CSP blocks it
    # (nothing leaves the machine) and Redoc drops the image. Anything else is a failure.
    logo = "'https://cdn.redoc.ly/redoc/logo-mini.svg' violates the following Content Security"
    assert [e for e in console_errors(browser) if logo not in e] == []
