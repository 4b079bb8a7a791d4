"""Caches near the readers: metadata with a TTL, data in blocks on local disk."""
