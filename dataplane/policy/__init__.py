"""Kubernetes NetworkPolicy compiled into per-endpoint policy map entries (pure Python)."""
