"""Interactive plotly HTML reports: one per simulate run, and comparisons over several runs."""
