"""The shadow report's page: escaped (record text is user text), self-contained, and looked
at in a real browser (headless Chromium, when installed) through
``scripts/shadow_report_screenshot.py``."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from weightshift.shadow.page import OutputError, render, write
from weightshift.shadow.pipeline import Options, report_from
from weightshift.shadow.synthetic import SCRIPT_TEXT, text_records, write_jsonl_gz

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
BLUE, ORANGE = (31, 119, 180), (255, 127, 14)


@pytest.fixture
def page(tmp_path: Path) -> str:
    folder = tmp_path / "records"
    write_jsonl_gz(folder / "batch.jsonl.gz", text_records())
    return render(report_from(Options(records=str(folder))))


def test_record_text_is_escaped_and_the_page_allows_no_script(page: str) -> None:
    assert "&lt;script&gt;alert(&#34;shadow&#34;)&lt;/script&gt;" in page
    assert "<script" not in page.lower()
    assert "default-src 'none'" in page
    assert "http://" not in page
    assert "https://" not in page


def test_the_page_embeds_its_plots(page: str) -> None:
    plots = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(plots) == 3  # latency, divergence over time, similarity
    for encoded in plots:
        pixels = image.imread(io.BytesIO(base64.b64decode(encoded)), format="png")
        assert pixels.shape[0] > 100
        assert pixels.shape[1] > 200
        assert pixels.std() > 0.05  # drawn, not blank


def test_a_hashes_only_report_says_where_similarity_would_need_text(tmp_path: Path) -> None:
    folder = tmp_path / "records"
    write_jsonl_gz(folder / "batch.jsonl.gz", text_records(8))
    rows = [{**r, "prompt_text": None} for r in text_records(8)]
    for data in rows:
        data.pop("prompt_text")
        data["stable"].pop("output_text")
        data["candidate"].pop("output_text")
    write_jsonl_gz(tmp_path / "hashes" / "batch.jsonl.gz", rows)
    html = render(report_from(Options(records=str(tmp_path / "hashes"))))
    assert "similarity needs pairs recorded with their text" in html
    assert "sha256 <code>" in html  # the divergent pairs show hashes instead


def test_write_is_all_or_nothing_and_never_overwrites(
    tmp_path: Path, page: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "records"
    report = report_from(Options(records=str(folder)))
    out = tmp_path / "out"
    write(report, out)
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]
    with pytest.raises(OutputError, match="never overwritten"):
        write(report, out)

    class Boom(RuntimeError):
        pass

    def failing(*_args: object) -> None:
        raise Boom

    target = tmp_path / "second"
    monkeypatch.setattr("weightshift.shadow.page.os.rename", failing)
    with pytest.raises(Boom):
        write(report, target)
    monkeypatch.undo()
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".second")] == []


def vertical_runs(
    pixels: np.ndarray, colour: tuple[int, int, int], length: int
) -> list[tuple[int, int, int]]:
    """(x, first y, last y) of the vertical runs of exactly ``colour``, at least ``length``."""
    match = np.all(pixels[:, :, :3] == colour, axis=2)
    runs = []
    for x in range(match.shape[1]):
        column = match[:, x]
        y = 0
        while y < len(column):
            if column[y]:
                start = y
                while y < len(column) and column[y]:
                    y += 1
                if y - start >= length:
                    runs.append((x, start, y - 1))
            y += 1
    return runs


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)",
)
def test_the_page_in_headless_chromium(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/shadow_report_screenshot.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # It opens: Chromium built the DOM, with the figures and the divergent pairs.
    dom = (tmp_path / "dom.html").read_text()
    assert "<h1>Shadow report: support-assistant</h1>" in dom
    assert 'id="figures"' in dom
    assert 'id="divergent"' in dom
    # The record's <script> is text: escaped in the DOM, and no script element exists.
    assert '&lt;script&gt;alert("shadow")&lt;/script&gt;' in dom
    assert "<script" not in dom.lower()
    assert SCRIPT_TEXT not in dom
    # A divergent pair stands side by side: its two sides in one .pair grid.
    pairs = dom.split('<div class="pair">')[1:]
    assert pairs
    first = pairs[0].split('<div class="divergent-pair">')[0]
    assert first.index('class="side stable"') < first.index('class="side candidate"')
    assert "Your order 5 ships on Monday" in first  # stable's text, beside
    assert "&lt;script&gt;" in first  # the candidate's, in the same pair
    # The screenshot: a real PNG, with plots drawn, and the two sides' coloured borders
    # (stable blue on the left, candidate orange on the right) at the same height.
    pixels = (image.imread(tmp_path / "shadow-report.png") * 255).round().astype(np.uint8)
    height, width = pixels.shape[:2]
    assert (width, height) == (1280, 2400)
    assert pixels[:, :, :3].std() > 10
    blue = [r for r in vertical_runs(pixels, BLUE, 30) if r[0] < width // 4]
    orange = [
        r for r in vertical_runs(pixels, ORANGE, 30) if width // 2 - 40 < r[0] < width // 2 + 80
    ]
    assert any(
        b_start <= o_end and o_start <= b_end
        for _, b_start, b_end in blue
        for _, o_start, o_end in orange
    ), (blue[:5], orange[:5])
