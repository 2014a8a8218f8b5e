"""Benchmarks: `pagedserve bench throughput|serve|latency|roofline|model`.

Hugging Face transformers is the baseline, measured in the same run as pagedserve.
"""
