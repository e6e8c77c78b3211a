"""Benchmarks (``make bench*``): kilib's QLoRA SFT step against a bare loop, notebook 01's paper-profile
stages, and thread counts on a CPU. Each writes JSON under ``results/bench/``."""
