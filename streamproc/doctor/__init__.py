"""``streamproc doctor``: read-only checks of everything the pipeline will meet."""
