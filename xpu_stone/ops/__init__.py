"""Row-wise op descriptions (Python mirrors of the structs in ``cuda_src/``)."""
