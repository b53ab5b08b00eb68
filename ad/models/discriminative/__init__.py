"""Discriminative models: a classifier on adapted features trained against synthetic feature anomalies
(SimpleNet)."""
