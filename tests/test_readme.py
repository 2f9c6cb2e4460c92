"""The README's Python example runs as written and its claims hold."""

import re
from pathlib import Path

import numpy as np
import pytest
from footprint_reference import result_footprint

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("astropy")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(blocks[0], str(README), "exec"), scope)  # noqa: S102 - our own README
    multi, children, again = scope["multi"], scope["children"], scope["again"]
    assert children.shape == (7, 5, 58, 48)
    # "they add up to the image" wherever the models claim a pixel of the children's footprint
    total = scope["multi"].models().sum(axis=0)
    claimed = (total > 0) & result_footprint(multi)[None]
    obs = scope["obs"]
    np.testing.assert_allclose(
        children.sum(axis=0)[claimed],
        obs.images[claimed],
        rtol=1e-5,
        atol=1e-5 * np.abs(obs.images).max(),
    )
    assert again.shape[0] == 7 and (tmp_path / "models.fits").exists()
    # scarlet lite reaches 9011 in 48 iterations; the defaults fit longer (e_rel 1e-4)
    assert multi.iterations <= scope["cdb"].DeblendConfig().max_iter and multi.loss <= 9011.0
