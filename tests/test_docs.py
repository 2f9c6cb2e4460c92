"""The tutorial docs/overview.md: its figures, its numbers and its code.

The figure script runs once (without the timing runs) into a temporary folder; the tests check
that every figure the tutorial links is written by it as a valid PNG, that the committed copies
in docs/images are those figures, that the tables pasted into the tutorial are the ones the
script prints now, and that the tutorial's code blocks run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import struct
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

DOCS = Path(__file__).resolve().parents[1] / "docs"
TUTORIAL = DOCS / "overview.md"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG file"
    length, kind = struct.unpack(">I4s", head[8:16])
    assert kind == b"IHDR" and length == 13, f"{path.name}: first chunk is not IHDR"
    return struct.unpack(">II", head[16:24])


def _linked_figures() -> list[str]:
    text = TUTORIAL.read_text()
    return re.findall(r"!\[[^\]]*\]\(images/([^)\s]+\.png)\)", text)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Run docs/make_figures.py into a temporary folder; (folder, written names, stdout)."""
    spec = importlib.util.spec_from_file_location("make_figures", DOCS / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("figures")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        written = module.main(["--out", str(out), "--no-timing"])
    return out, written, buffer.getvalue()


def test_tutorial_links_figures():
    names = _linked_figures()
    assert len(names) >= 12, f"expected the tutorial's figures, found {names}"
    assert len(set(names)) == len(names), "a figure is linked twice"


def test_every_linked_figure_is_made_by_the_script(generated):
    out, written, _ = generated
    for name in _linked_figures():
        assert name in written, f"{name} is linked but the script does not write it"
        width, height = _png_size(out / name)
        assert width > 0 and height > 0


def test_committed_figures_match_the_script(generated):
    out, written, _ = generated
    committed = sorted(p.name for p in (DOCS / "images").glob("*.png"))
    assert committed == sorted(written), "docs/images differs from what the script writes"
    assert set(_linked_figures()) == set(committed), "unlinked or missing figures in docs/images"
    total = 0
    for name in committed:
        assert _png_size(DOCS / "images" / name) == _png_size(out / name), name
        total += (DOCS / "images" / name).stat().st_size
    assert total < 3_000_000


def test_tutorial_tables_are_the_scripts(generated):
    """Every table row the script prints is in the tutorial, verbatim."""
    _, _, stdout = generated
    text = TUTORIAL.read_text()
    rows = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert len(rows) >= 25
    missing = [row for row in rows if row not in text]
    assert not missing, (
        "the tutorial's numbers are stale; rerun python docs/make_figures.py and paste:\n"
        + "\n".join(missing)
    )


def test_tutorial_code_runs(tmp_path, monkeypatch):
    """The python blocks of the tutorial, in order, in one namespace (they save PNGs in cwd)."""
    blocks = re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(), flags=re.S)
    assert len(blocks) >= 8
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for k, block in enumerate(blocks):
        exec(compile(block, f"overview.md python block {k}", "exec"), namespace)
    # The blocks' own results agree with what the tutorial says about them.
    assert namespace["fit"].iterations == len(namespace["fit"].loss_history)
    assert namespace["result"].children[3].template_kind == "monotonic"
    assert [c.template_kind for c in namespace["result"].children[4:]] == ["psf"] * 3
    assert _png_size(tmp_path / "blend_color.png")[0] > 0


def test_source_panels_show_negative_residuals():
    """The residual panel (used by the tutorial's figures) maps 0 to grey, so negative
    residuals are darker than zero and positive ones brighter, in every channel."""
    import matplotlib.pyplot as plt
    import numpy as np

    from cdeblend.display import plot_source_panels

    rng = np.random.default_rng(3)
    images = rng.normal(0.0, 1.0, (3, 20, 20)) + 50.0 * np.exp(
        -((np.arange(20)[:, None] - 10.0) ** 2 + (np.arange(20)[None, :] - 10.0) ** 2) / 8.0)
    residual = np.zeros((3, 20, 20))
    residual[:, :, :6] = rng.normal(0.0, 1.0, (3, 20, 6))  # noise: sets the scale
    residual[:, 2, 10] = -2.0
    residual[:, 17, 10] = +2.0
    fig = plot_source_panels(images, images * 0.5, images - residual, images * 0.5)
    rgb = np.asarray(fig.axes[2].images[0].get_array()).astype(int)
    plt.close(fig)
    zero, neg, pos = rgb[10, 15], rgb[2, 10], rgb[17, 10]
    assert zero[0] == zero[1] == zero[2] > 0  # grey
    assert np.all(neg < zero) and np.all(pos > zero)
