"""The measurement worker ``kiln.tune`` starts for each batch of candidates (``python -m kiln._worker``).

It reads one measurement job on stdin and writes its events on stdout, as ``kiln measure-worker``
does for the CLI. Not for direct use.
"""

from kiln._native import measure_worker

if __name__ == "__main__":
    measure_worker()
