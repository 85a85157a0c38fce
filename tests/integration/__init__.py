"""Integration tests: the real local control plane, S3 server, operator and node runner (see conftest.py)."""
