"""Evaluation with InsightFace's verification protocol on the ``.bin`` sets."""
