"""The model file's schema: its name, version and limits, and its layout.

File layout (:func:`save_models` / :func:`load_models`, one FITS file, needs astropy:
``pip install cdeblend[io]``). All arrays are written with their own dtype, so a round trip is
bit-identical; integers are int64.

=====  ============  =================================================================
HDU    EXTNAME       content
=====  ============  =================================================================
0      PRIMARY       no data; header ``SCHEMA = 'cdeblend.model_data'``, ``SCHVER``
                     (int, :data:`SCHEMA_VERSION`), ``NBANDS``, ``BAND1..BANDn`` (names),
                     ``SEDTYPE`` / ``MORTYPE`` (dtype names of SEDs and morphologies),
                     ``MPSFSIG`` (model PSF sigma; absent for PSF-matched data),
                     ``CONSTHR`` (the children's footprint threshold in noise RMS,
                     ``DeblendConfig.conserved_thresh``; absent in files written before
                     it was stored, which read as 0),
                     ``NBLENDS``, ``NSOURCES``, ``NCOMPS`` (row counts, checked on read)
1      BLENDS        BinTable, one row per blend: ``PARENT_ID``, ``Y0``, ``X0``,
                     ``HEIGHT``, ``WIDTH``, ``SRC_START``, ``N_SOURCES`` (its rows in
                     SOURCES), ``FP_OFFSET`` (start of its footprint in FOOTPRINTS, -1 if
                     none), ``ITERATIONS``, ``LOSS``, ``CONVERGED``, ``ISOLATED``,
                     ``FALLBACK`` (optional: files without it read as False)
2      SOURCES       BinTable: ``ID``, ``PEAK_ID``, ``COMP_START``, ``N_COMPS``
3      COMPONENTS    BinTable: ``Y0``, ``X0``, ``HEIGHT``, ``WIDTH``, ``PEAK_Y``,
                     ``PEAK_X``, ``SED`` (B-vector), ``MORPH_OFFSET`` (start in MORPHS)
4      MORPHS        1-D image: every morphology, C order, concatenated
5      FOOTPRINTS    1-D uint8 image: every stored footprint (H*W values each)
6      MODEL_PSF     2-D image (hm, wm)
7      PSFS          3-D image (B, hp, wp)
=====  ============  =================================================================

Sources of a blend are consecutive rows of SOURCES, components of a source consecutive rows
of COMPONENTS, both in the in-memory order. A reader refuses (``ValueError``) a file that is
not FITS, a FITS file without the schema keywords, a newer schema version, a missing HDU or
row/size counts that do not add up (a truncated file). A model file may come from anywhere,
so the reader also refuses, naming the row or keyword, anything the kernels would trust:
a path that is not a regular file (``/dev/zero``, a pipe), HDUs declaring more data than the
file holds, box sides < 1 or values beyond :data:`~cdeblend.box.MAX_COORD`, blend
boxes of more than :data:`MAX_BLEND_PIXELS` pixels, a peak outside its component's box, NaN
or infinite SEDs, morphologies or PSFs, data whose dtype is not the one ``SEDTYPE`` /
``MORTYPE`` declare (nothing is cast), offsets that are not the running sums above, and a
parent id that appears twice. A component may stick out of its blend box (its model is
clipped there); :meth:`ModelData.rebuild` refuses to fit such a blend.
"""

__all__ = ["MAX_BLEND_PIXELS", "SCHEMA_NAME", "SCHEMA_VERSION"]

#: Value of the ``SCHEMA`` keyword in the primary header of a model file.
SCHEMA_NAME = "cdeblend.model_data"


#: Newest schema version this module writes and reads.
SCHEMA_VERSION = 1


#: Largest blend box (pixels) a model file may declare: 8192 x 8192, four times an LSST
#: patch's area. The dense products of a blend (``models()``, conserved images) are
#: allocated on its box, so a crafted box must not ask for terabytes.
MAX_BLEND_PIXELS = 1 << 26
