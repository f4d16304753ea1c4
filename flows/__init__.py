"""Prefect flows: stage flows, the end-to-end pipeline and the scheduled CG refresh (issue #6).

Flows orchestrate and never compute: each stage runs as a job (``python -m tasks.<stage> --config X.yaml``)
on a backend chosen by config, and its result is the stage's Manifest.
"""
