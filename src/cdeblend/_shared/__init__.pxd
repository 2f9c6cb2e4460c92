# Compile-time declarations shared by the Cython kernels of cdeblend: ``fused.pxd`` (the
# fused float types) and ``gil.pxd`` (when a kernel releases the GIL). Nothing here is
# compiled or imported at run time; this file marks the folder as a package for ``cimport``.
