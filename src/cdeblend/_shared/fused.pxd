# The floating-point fused types of the kernels, declared once (cimported by every kernel).
#
# ``real`` is the precision of a kernel's images (float32 or float64, one specialisation
# each). ``other_real`` is a second, independent one, for an argument whose precision may
# differ from the images' in the same call (PSFs and kernels, a source of weights, an SED):
# a function using both is specialised for all four combinations.

ctypedef fused real:
    float
    double

ctypedef fused other_real:
    float
    double
