"""Analyses over traces: how well each signal and gate predicts the verifier's rejections (RQ1)."""
