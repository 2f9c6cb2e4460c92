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


def _tables(text: str) -> list[list[str]]:
    """The markdown tables of a text: runs of consecutive lines starting with '|'."""
    tables: list[list[str]] = []
    current: list[str] = []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def test_tutorial_tables_are_the_scripts(generated):
    """Every table row the script prints is in the tutorial: verbatim, or for the rows and
    tables marked machine-dependent, in the same form (same labels and words, numbers free).

    The marked runs take round-off-dependent paths once their loss is flat: the
    1000-iteration fit of the bundled blend stopped after 222 or 248 iterations (loss 8588 or
    8570) when the last bit of 5 of its 13,920 pixel values changed, and the earlier
    defaults' (peak_carry=0, e_rel=1e-4) after 289 (loss 8258) on the machine that wrote the
    tutorial and after 65 (loss 8745) on a nudged image. So their numbers are not compared
    here; what the tutorial claims of them, on every machine, is tested below. The defaults'
    fit (50 iterations) is compared verbatim, like the reference's (48): under the same nudge
    it stopped at the same iteration with the same printed numbers.
    """
    mark = " (*)"
    _, _, stdout = generated
    text = TUTORIAL.read_text()
    tutorial_tables = {tuple(_cells(t[0])): t for t in _tables(text)}
    rows = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert len(rows) >= 25
    missing = []
    for table in _tables(stdout):
        header = _cells(table[0])
        whole = header[0].endswith(mark)
        for row in table[:1] + table[2:]:
            if row in text:
                continue
            cells = _cells(row)
            theirs = [_cells(r) for r in tutorial_tables.get(tuple(header), [])]
            match = [c for c in theirs if c[0] == cells[0]]
            marked = whole or cells[0].endswith(mark)
            if not (marked and match and _form(row) == _form(_row(match[0]))):
                missing.append(row)
    assert not missing, (
        "the tutorial's numbers are stale; rerun python docs/make_figures.py and paste:\n"
        + "\n".join(missing)
    )


def _form(row: str) -> str:
    return re.sub(r"-?\d+(?:\.\d+)?", "#", row)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _runs(stdout: str) -> dict[str, list[str]]:
    """The convergence table's rows by run name (marks removed)."""
    table = next(t for t in _tables(stdout) if _cells(t[0])[:2] == ["run", "iterations"])
    return {_cells(r)[0].replace(" (*)", ""): _cells(r) for r in table[2:]}


def test_what_the_tutorial_says_of_the_runs_holds(generated):
    """On every machine: the defaults end below the reference's loss, the long fit below
    the defaults' and after more than twice their iterations, the defaults' stop does not
    depend on a round-off-sized change of the image, and the reference reproduces the LSST
    pipeline (9011 after 48). (The earlier defaults' iterations are not compared: without
    the peak carry where they stop is round-off's choice, 65 or 289 on this blend.)"""
    _, _, stdout = generated
    runs = _runs(stdout)
    loss = {name: float(cells[4]) for name, cells in runs.items()}
    iterations = {name: int(cells[1]) for name, cells in runs.items()}
    assert loss["defaults"] < loss["reference (LSST pipeline)"]
    long = 'e_rel=1e-5, max_iter=1000, convergence="settled"'
    assert loss[long] < loss["defaults"]
    assert iterations[long] > 2 * iterations["defaults"]
    assert runs["defaults, last bit of 5 pixels changed"][1:] == runs["defaults"][1:]
    assert runs["reference (LSST pipeline)"][1] == "48"
    assert round(loss["reference (LSST pipeline)"]) == 9011


def test_machine_dependent_rows_are_marked(generated):
    """The long fits' rows are marked in the script's output and in the tutorial."""
    _, _, stdout = generated
    text = TUTORIAL.read_text()
    for name in (
        'e_rel=1e-5, max_iter=1000, convergence="settled" (*)',
        "earlier defaults: peak_carry=0, e_rel=1e-4 (*)",
    ):
        assert f"| {name} |" in stdout and f"| {name} |" in text
    assert "| source (*) |" in stdout and "| source (*) |" in text


def test_bright_sources_do_not_depend_on_the_long_fit(generated):
    """What the tutorial claims of the machine-dependent change table on every machine: the
    two bright sources' fluxes move by little from the defaults' fit to the 1000-iteration
    fit, while the faint sources' move by several percent.

    Measured, for the two paths the long fit took under a round-off-sized change of the
    image (222 and 248 iterations): sources 0 and 1 by at most 0.1 % and 0.6 %
    re-apportioned, 0.5 % and 1.1 % in the model, so 2 % for both; the largest change of a
    faint source (2-6) 9.4-9.5 % re-apportioned and 12.9-13.0 % in the model, so more than
    5 % ("several percent") and more than three times the bright sources' largest change.
    """
    _, _, stdout = generated
    table = next(
        t for t in _tables(stdout) if _cells(t[0])[1:] == ["model flux", "re-apportioned flux"]
    )
    assert _cells(table[0])[0] == "source (*)"
    for column in (1, 2):  # model flux, re-apportioned flux
        change = {int(_cells(r)[0]): float(_cells(r)[column].rstrip("%")) for r in table[2:]}
        bright = max(change[0], change[1])
        faint = max(v for k, v in change.items() if k >= 2)
        assert bright < 2.0
        assert faint > 5.0 and faint > 3 * bright


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
        -((np.arange(20)[:, None] - 10.0) ** 2 + (np.arange(20)[None, :] - 10.0) ** 2) / 8.0
    )
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
