"""Object storage (S3-compatible): builds published to and read from ``s3://bucket/prefix`` URLs.

- ``urls``: telling a URL from a local path, and which URLs are supported;
- ``store``: the connection (s3fs), its options, bounded retries and one-line errors;
- ``lock``: one build per prefix (a lock object written conditionally, held as a lease);
- ``publish``: a build or a mixture staged locally, then published object by object, ``dataset.json`` last;
- ``work``: finished partitions handed over through the bucket's ``_work/`` (resume elsewhere, Ray nodes);
- ``mirror``: a build in a bucket copied to a local mirror for verify, audit, inspect, compare and export;
- ``inputs``: recipe inputs named by URL, listed (size, ETag) and read in place, streamed.

See docs/storage.md for the protocol and what it assumes of the store."""
