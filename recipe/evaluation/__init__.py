"""Evaluation: metrics now; the Test stage's suites build on them."""
