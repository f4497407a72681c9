"""`faultline bench`: end-to-end throughput and submit-to-start latency, Faultline beside a peer queue.

Layout: runner.py drives one Faultline run (fresh database, its own coordinator subprocess, worker
subprocesses, producer tasks); worker.py is the worker subprocess; peers.py runs PgQueuer through its
public API in the same shape; stats.py holds percentiles, medians and the report. The CLI front end is
coordinator/cli/bench.py.
"""
