"""How samples are kept: deterministic webdataset shards with parquet sidecars and a dataset manifest."""

from shards.codec import decode_sample, encode_record
from shards.embeddings import DatasetEmbeddings, embeddings, iter_embeddings
from shards.hf import hf_features
from shards.imageinfo import ImageInfo, probe_image
from shards.manifest import DatasetManifest, ManifestError, ShardInfo, read_manifest
from shards.reader import iter_dataset, iter_shard
from shards.tokens import count_tokens
from shards.verify import verify_dataset
from shards.writer import ShardWriter

__all__ = [
    "DatasetEmbeddings",
    "DatasetManifest",
    "ImageInfo",
    "ManifestError",
    "ShardInfo",
    "ShardWriter",
    "count_tokens",
    "decode_sample",
    "embeddings",
    "encode_record",
    "hf_features",
    "iter_dataset",
    "iter_embeddings",
    "iter_shard",
    "probe_image",
    "read_manifest",
    "verify_dataset",
]
