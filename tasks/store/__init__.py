"""The object store: S3 and local directories, object lock, ranged reads, encryption."""
