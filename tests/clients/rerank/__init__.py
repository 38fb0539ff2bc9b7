"""Rerank and reward clients against the daemon (a package, so that its conftest and helpers do not
shadow tests/clients/conftest.py, which tests/clients/test_lm_eval.py imports as `conftest`)."""
