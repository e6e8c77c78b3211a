"""Notebook 01: knowledge injection by supervised fine-tuning (Mecklenburg et al., 2024):
token-based and fact-based Q&A scaling, LLM-written sets and judging, the RAG baseline."""
