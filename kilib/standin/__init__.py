"""Stand-ins for what the paper profile fetches from the Hub, so that its code path runs offline
(docs/standins.md).

``kilib.standin.models`` builds a model's stand-in folder (``standin_folder``): its real configuration or the
same family scaled down, a tokenizer of the real class, length, special ids and chat template
(``kilib.standin.tokenizers``), and random weights. ``kilib/standin/configs/`` holds each model's published
``config.json`` with a ``standin`` section describing its tokenizer.
"""
