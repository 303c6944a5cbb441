"""After the CI-sized workflow run: every viz output exists, `snakemake --report` builds a
self-contained HTML, and headless Chromium renders it with every embedded image decoding and the
metrics table showing. Skips only when no Chromium is installed (.ci/run installs it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.cdp import Browser
from tests.workflow_runner import FinishedRun, run

pytestmark = pytest.mark.workflow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Run in the report page: decode every embedded image, show one figure through the report's own
# viewer, read the metrics page's tables, then show that page (for the screenshot).
CHECK = """
(async () => {
  const out = {images: 0, broken: [], viewer_width: 0, tables: [], shown: ""};
  for (const [path, entry] of Object.entries(results)) {
    if (!entry.mime_type.startsWith("image/")) continue;
    const image = new Image();
    image.src = entry.data_uri;
    try { await image.decode(); } catch (error) {}
    out.images += 1;
    if (!(image.naturalWidth > 0)) out.broken.push(path);
  }
  const figure = Object.keys(results).find(p => p.endsWith("figures/roc.png"));
  app.setView({content: "img", contentPath: results[figure].data_uri, resultPath: figure});
  await new Promise(r => setTimeout(r, 1000));
  const shown = document.querySelector("#app img[src^='data:image/png']");
  if (shown) { try { await shown.decode(); } catch (error) {} }
  out.viewer_width = shown ? shown.naturalWidth : 0;
  const page = Object.keys(results).find(p => p.endsWith("metrics.html"));
  const text = await (await fetch(results[page].data_uri)).text();
  const doc = new DOMParser().parseFromString(text, "text/html");
  out.tables = [...doc.querySelectorAll("table")].map(t => [t.id, t.rows.length]);
  app.setView({content: "html", contentPath: results[page].data_uri, resultPath: page});
  await new Promise(r => setTimeout(r, 1500));
  const frame = document.querySelector("#app iframe, #app embed, #app object");
  out.shown = frame ? (frame.src || frame.data || "").slice(0, 40) : "";
  return out;
})()
"""


@pytest.fixture(scope="module")
def finished(tiny_run: FinishedRun) -> Path:
    return tiny_run.folder


def test_viz_outputs_exist_for_every_slide(finished: Path) -> None:
    results = finished / "results"
    sheet = pd.read_csv(results / "sheet.tsv", sep="\t")
    for slide, split in zip(sheet["slide_id"], sheet["split"]):
        if split in ("val", "test"):
            assert (results / "final" / "heatmaps" / f"{slide}.png").stat().st_size > 10_000
        collection = json.loads((results / "final" / "heatmaps" / f"{slide}.geojson").read_text())
        assert collection["type"] == "FeatureCollection" and collection["features"]
    for name in ("roc", "rounds", "confusion", "finetune", "mil"):
        for ext in ("png", "svg"):
            assert (results / "final" / "figures" / f"{name}.{ext}").stat().st_size > 1000
    assert (results / "final" / "mined" / "r0.gallery.png").exists()
    scores = pd.read_parquet(results / "r1" / "mil" / "scores" / "test.parquet")
    assert {"x", "y", "size"} <= set(scores.columns) and (scores["size"] > 0).all()


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)")
def test_report_renders_in_chromium(finished: Path, tmp_path: Path) -> None:
    report = finished / "report.html"
    run(finished, "--report", str(report))
    assert report.stat().st_size < 20_000_000
    browser = Browser(CHROMIUM, FLAGS, tmp_path / "profile")
    try:
        browser.open(report.as_uri())
        browser.wait_for("document.readyState === 'complete' && typeof app === 'object' && !!app")
        check = browser.evaluate(CHECK)
        screenshot = finished / "report-screenshot.png"
        browser.screenshot(screenshot)
    finally:
        browser.close()
    assert check["images"] >= 10 and check["broken"] == [], check
    assert check["viewer_width"] > 0, check
    assert dict(check["tables"]) == {"final": 7, "rounds": 3}, check
    assert check["shown"].startswith("data:text/html"), check
    assert screenshot.stat().st_size > 10_000
