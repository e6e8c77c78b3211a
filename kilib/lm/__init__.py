"""The language-model layer every study shares: loading models and tokenizers (4-bit included),
training, prompts and local data, document fetching and retrieval, answer scoring and inference."""
