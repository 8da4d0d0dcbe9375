"""Benchmarks and diagnostics around the pipeline: ablations, timing, error breakdowns, shipping a teacher."""
