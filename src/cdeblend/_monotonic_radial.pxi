def _radial_placeholder(): return 2
