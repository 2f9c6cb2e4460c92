"""Two multi-band settings on the same blends: median |dF/F| per blendedness bin, the paired
difference with a bootstrap interval, and the sources with truth S/N >= 20 that keep little
of their flux.

The multi-band twin of ``bench/single_band_paired.py`` (same figures, same bootstrap over
whole blends): each set's first ``--n`` blends go through ``Deblender(config).deblend``
(the one call of ``bench/accuracy.py``) with settings A and B. A difference inside the
interval is noise.

Sets are read from ``--sets-dir`` (default ``../simsets``, made by ``bench/accuracy.py
--make``); ``sim_lsst`` and ``sim_hsc`` from ``--data`` (default ``../shared/data``
relative to the repository root).

Usage::

    python bench/multi_band_paired.py --a '{}' --b '{"converge_window": 10}' \\
        [--sets lsst_tune,hard_lsst_tune] [--n 300] [--boot 400]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402  (the sibling bench script: loading, the one call)
from single_band_paired import paired_main  # noqa: E402

from cdeblend import DeblendConfig  # noqa: E402


def main(argv=None) -> None:
    sets = "hard_lsst_tune,hard_hsc_tune,lsst_tune,hsc_tune"
    paired_main(argv, DeblendConfig, accuracy.multi_band, sets, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
