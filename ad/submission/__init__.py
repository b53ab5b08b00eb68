"""Benchmark submissions: test sets without public ground truth, scored and written in the format an official
evaluation server accepts (`python -m ad.submission.mvtec_ad2`)."""
