"""The POSIX bridge: ``unionstore mount`` shows a bucket (or a prefix of it) as a local
directory through FUSE (pyfuse3 on asyncio), as a client of any S3 endpoint.

A request's path, module by module: ``ops`` (the pyfuse3 boundary: every exception becomes an
errno) -> ``fs`` / ``files`` (POSIX on S3) -> ``metadata`` + ``inodes`` (names) or
``blockcache`` + ``diskblocks`` (bytes) or ``writer`` (uploads) -> ``s3client`` (+ ``s3errors``).
Start-up lives in ``mount``, options in ``config``, the command line in ``cli``.
See docs/fuse.md.
"""
