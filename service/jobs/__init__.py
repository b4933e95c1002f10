"""Asynchronous analyses (``POST /jobs``): an embedded SQLite store, a runner, progress reporting.

A job is a ``/predict`` request that the caller does not wait for: it is stored, run in the
background through the same admission slots and batchers, and its result (or error) and evidence
files are kept for ``DFS_JOB_TTL_S``. ``store`` keeps the rows, ``runner`` runs them, ``progress``
carries the pipeline's progress reports from its worker threads.
"""
