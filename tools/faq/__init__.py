"""The FAQ's teaching tools (docs/faq.md): each answers one question with a computation on this repository's
models or on a small example. The tools that users run on their own data and models are in ``tools/``."""
