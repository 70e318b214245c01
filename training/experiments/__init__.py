"""Benchmarks and experiment harnesses around the model; the model core never imports them."""
