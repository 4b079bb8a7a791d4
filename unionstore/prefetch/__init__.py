"""Warm caches before the first reader, and keep them fresh, from HDFS's own audit log.

- :mod:`~unionstore.prefetch.audit`: audit-log lines -> typed events (garbage counted, skipped)
- :mod:`~unionstore.prefetch.tail`: follow log files across rotation/truncation; the ledger of
  what is done and the atomically written position
- :mod:`~unionstore.prefetch.rules`: HDFS paths/globs -> bucket[/prefix], sizes, priority
- :mod:`~unionstore.prefetch.daemon`: ``unionstore prefetch``: events -> invalidate/warm
- :mod:`~unionstore.prefetch.warm`: admin calls with retry, S3 listing, ``unionstore warm``
- :mod:`~unionstore.prefetch.cli`: the two subcommands

A peer of the S3 edge: it talks to gateways only through their admin and S3 APIs.
"""
