"""unionstore: an S3 gateway over HDFS and object stores, with caches near the readers."""

__version__ = "0.1.0"
