"""Notebook 02: parametric knowledge transfer (Zhong et al., "Seeking Neural Nuggets", ICLR 2024):
sensitivity-based extraction from a teacher and LoRA initialised from it."""
