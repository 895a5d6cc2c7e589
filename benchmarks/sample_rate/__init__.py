"""The sample-rate study's modules; benchmarks/sample_rate_study.py is its command line."""
