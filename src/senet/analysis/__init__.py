"""Measuring networks: complexity (params, FLOPs) and, later, latency, ablations and excitation statistics."""
