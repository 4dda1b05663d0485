"""Native code: artifacts, the compile cache, keys, and source builds."""
