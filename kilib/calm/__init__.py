"""Notebook 03: composition of an anchor with an augmenting model (Bansal et al., CALM, ICLR 2024)."""
