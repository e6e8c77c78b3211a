"""Notebook 04: neural memory modules attached to a frozen LM, evaluated on FEVER claims."""
