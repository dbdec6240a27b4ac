"""Benchmarks: the engine against hand-written DAG runners doing the same work.

Run ``python -m benchmarks`` (or ``nox -s bench``); see ``benchmarks/README.md``.
"""
