"""Detection: a chi^2-style detection image, footprints above a threshold, peaks, parents.

Works for one band (H, W) or several (B, H, W). A *parent* is one footprint (a connected set
of pixels above the threshold, grown by a few pixels) with the peaks inside it; each parent
is deblended on its own. Users with their own peak list can group it into parents with
:func:`group_peaks` (or ``detect(..., peaks=...)``), and deblend a whole single-band image
with :func:`deblend_image`.

The peaks of a footprint are the objects it blends, not the pieces of one: every local
maximum is a candidate, and one that is not its footprint's brightest is kept only if, at
its saddle (where its region joins a brighter peak's), it rises ``peak_significance`` noise
sigma above the saddle, holds more than ``min_contrast`` of the brighter region's flux above
the saddle (SExtractor's ``DEBLEND_MINCONT``, on every level instead of
``DEBLEND_NTHRESH``), and lies ``min_separation`` PSF FWHM from a brighter kept peak
(:func:`find_peaks`). The defaults below were chosen on the simulations and on real HSC,
HST and ESO images together (``bench/detection.py`` prints both).


The package's rooms, one job each: :mod:`~cdeblend.detection.image` (the detection image and
its noise), :mod:`~cdeblend.detection.parents` (footprints, the :class:`Parent` type, peaks
grouped into parents), :mod:`~cdeblend.detection.peaks` (peak finding and culling),
:mod:`~cdeblend.detection.pipeline` (:func:`detect`: image to parents) and
:mod:`~cdeblend.detection.results` (:func:`deblend_image`).
"""

from .image import detection_image, filter_noise
from .parents import Parent, find_footprints, group_peaks
from .peaks import find_peaks
from .pipeline import detect
from .results import ParentResult, deblend_image

__all__ = [
    "Parent",
    "ParentResult",
    "deblend_image",
    "detect",
    "detection_image",
    "find_footprints",
    "filter_noise",
    "find_peaks",
    "group_peaks",
]
