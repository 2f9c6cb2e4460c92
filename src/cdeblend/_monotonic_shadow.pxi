def _shadow_placeholder(): return 1
