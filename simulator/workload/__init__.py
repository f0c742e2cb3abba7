"""Workloads: write, transform, synthesise and profile request traces (``simulate trace ...``)."""
