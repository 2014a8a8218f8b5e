"""Tensor-parallel-ready building blocks for the models."""
