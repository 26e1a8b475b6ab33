"""``embedding_decontaminate``: drop training samples that show a benchmark image, by embedding cosine (global).

Before the partitions run, the benchmark images are embedded once with the step's model (through the embedding
cache: a rebuild embeds nothing) into ``_work/embedding-decontaminate/<step>.npy``, one row per image, with the
benchmark of each row beside it. After them, every staged image embedding of the same model is searched against
that index (faiss, exact inner product); a sample with an image at cosine >= ``threshold`` of a benchmark image
is dropped as ``contaminated_image_embedding:<benchmark>`` (the benchmark of its closest match), which the audit
reports per benchmark beside the perceptual-hash and n-gram decontamination. Crops, overlays and re-renders that
perceptual hashes miss stay close in a good embedding space (FineVision uses SSCD at 0.95).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.errors import CurationError
from curation.recipe.models import EmbeddingBenchmark, EmbeddingDecontaminateStep
from curation.steps.contract import GlobalContext, GlobalDrop, GlobalDrops, GlobalFindings, GlobalStep
from curation.steps.decontaminate import IMAGE_SUFFIXES
from curation.steps.dedup import Sidecars
from curation.steps.model_stage import ModelStage, check_model, model_config, model_identity
from curation.steps.semantic_dedup import staged_embeddings
from shards.atomic import atomic_write_json, tmp_path
from shards.embeddings import load_embeddings

PREFIX = "contaminated_image_embedding:"
MAX_IMAGE_BYTES = 64 << 20  # a benchmark image file larger than this is skipped, not read
_BATCH = 256


def index_paths(work: Path, label: str) -> tuple[Path, Path]:
    folder = work / "embedding-decontaminate"
    return folder / f"{label}.npy", folder / f"{label}.json"


def check_benchmark_paths(cfg: EmbeddingDecontaminateStep, where: str) -> None:
    for bench in cfg.benchmarks:
        for key, ok in (
            ("shards", lambda p: (p / "dataset.json").is_file()),
            ("images", Path.is_dir),
            ("parquet", lambda p: p.is_file() or p.is_dir()),
        ):
            value = getattr(bench, key)
            if value is not None and not ok(Path(value)):
                what = {"shards": "a built dataset", "images": "a directory", "parquet": "a parquet file or folder"}
                raise CurationError(f"{where}.benchmarks.{bench.name}.{key}: {value} is not {what[key]}")


def benchmark_images(bench: EmbeddingBenchmark, limit: int) -> Iterator[bytes]:
    """The benchmark's image bytes, at most ``limit``; files too large or not regular are skipped."""
    return itertools.islice(_images(bench), limit)


def _images(bench: EmbeddingBenchmark) -> Iterator[bytes]:
    if bench.shards:
        from shards.reader import iter_dataset

        for record in iter_dataset(Path(bench.shards)):
            yield from record.image_list()
        return
    if bench.images:
        for path in sorted(p for p in Path(bench.images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            if path.is_file() and not path.is_symlink() and path.stat().st_size <= MAX_IMAGE_BYTES:
                yield path.read_bytes()
        return
    assert bench.parquet is not None
    root = Path(bench.parquet)
    files = [root] if root.is_file() else sorted(root.rglob("*.parquet"))
    for file in files:
        parquet = pq.ParquetFile(file)
        if bench.image_column not in parquet.schema_arrow.names:
            have = ", ".join(parquet.schema_arrow.names)
            raise CurationError(f"{file}: no column {bench.image_column!r} (image_column); it has: {have}")
        for batch in parquet.iter_batches(batch_size=64, columns=[bench.image_column]):
            column = batch.column(0)
            if pa.types.is_struct(column.type) and column.type.get_field_index("bytes") >= 0:
                column = pc.struct_field(column, "bytes")  # pyright: ignore[reportAttributeAccessIssue]
            if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
                raise CurationError(f"{file}: column {bench.image_column!r} holds {column.type}, not image bytes")
            sizes = pc.binary_length(column).to_pylist()  # pyright: ignore[reportAttributeAccessIssue]
            for i, size in enumerate(sizes):  # the size is checked before the bytes become a Python object
                if size is not None and 0 < size <= MAX_IMAGE_BYTES:
                    yield column[i].as_py()


def prepare_index(cfg: EmbeddingDecontaminateStep, label: str, work: Path, models: Mapping[str, Any]) -> Path:
    """Embed every benchmark image once per build (kept in ``work``: a resumed build reuses it)."""
    vectors_path, names_path = index_paths(work, label)
    if vectors_path.is_file() and names_path.is_file():
        return vectors_path
    stage = ModelStage(cfg.model, model_config(models, cfg.model))
    rows: list[np.ndarray] = []
    names: list[str] = []
    skipped: dict[str, int] = {}
    try:
        for bench in cfg.benchmarks:
            images_of = benchmark_images(bench, cfg.max_images)
            while batch := list(itertools.islice(images_of, _BATCH)):
                images = {hashlib.sha256(data).hexdigest(): data for data in batch}
                vectors, failed = stage.image_vectors(images)
                skipped[bench.name] = skipped.get(bench.name, 0) + len(failed)
                rows += [vectors[sha] for sha in images if sha in vectors]
                names += [bench.name] * sum(1 for sha in images if sha in vectors)
        dim = stage.dim
    finally:
        stage.close()
    vectors = np.stack(rows) if rows else np.zeros((0, dim), np.float16)
    vectors_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(names_path, {"benchmarks": names, "skipped": skipped})
    tmp = tmp_path(vectors_path)
    with open(tmp, "wb") as f:
        np.save(f, vectors.astype(np.float16), allow_pickle=False)
    tmp.replace(vectors_path)  # the vectors last: both files exist only when the index is complete
    return vectors_path


class EmbeddingDecontaminate(GlobalStep):
    config = EmbeddingDecontaminateStep
    drop_reasons: ClassVar[dict[str, str]] = {
        PREFIX: "an image within the cosine threshold of the named benchmark's image (its embedding)"
    }

    @classmethod
    def check_inputs(cls, cfg: EmbeddingDecontaminateStep, where: str, models: Mapping[str, Any]) -> None:
        check_model(model_config(models, cfg.model), f"{where} (model {cfg.model})")
        check_benchmark_paths(cfg, where)

    @classmethod
    def input_identity(cls, cfg: EmbeddingDecontaminateStep, models: Mapping[str, Any]) -> dict[str, Any]:
        return model_identity(model_config(models, cfg.model))

    @classmethod
    def prepare(cls, cfg: EmbeddingDecontaminateStep, label: str, work: Path, models: Mapping[str, Any]) -> None:
        prepare_index(cfg, label, work, models)

    @classmethod
    def find(
        cls,
        cfg: EmbeddingDecontaminateStep,
        label: str,
        sidecars: Sidecars,
        already: GlobalDrops,
        context: GlobalContext,
    ) -> GlobalFindings:
        import faiss

        vectors_path, names_path = index_paths(context.work, label)
        bench = load_embeddings(vectors_path, mmap=False).astype(np.float32)
        names = json.loads(names_path.read_text())["benchmarks"]
        found: GlobalDrops = {}
        if not len(bench):
            return GlobalFindings(found)
        faiss.normalize_L2(bench)
        index = faiss.IndexFlatIP(bench.shape[1])
        index.add(bench)
        name = f"{cfg.model}.image"
        for gid, number, path in sidecars:
            table = pq.read_table(path, columns=["key", "source", "origin", "n_images"]).to_pydict()
            if not table["key"]:
                continue
            query = load_embeddings(staged_embeddings(path, name)).astype(np.float32)
            faiss.normalize_L2(query)
            sims, ids = index.search(query, 1)  # the closest benchmark image of every image of the shard
            gone = already.get((gid, number), {})
            starts = np.concatenate([[0], np.cumsum(table["n_images"])])
            for i, key in enumerate(table["key"]):
                first, stop = int(starts[i]), int(starts[i + 1])
                if first == stop or key in gone:
                    continue
                best = first + int(np.argmax(sims[first:stop, 0]))
                if sims[best, 0] >= cfg.threshold:
                    which = names[int(ids[best, 0])]
                    detail = (
                        f"image {best - first} at cosine {sims[best, 0]:.4f} of a {which} image ({table['origin'][i]})"
                    )
                    found.setdefault((gid, number), {})[key] = GlobalDrop(
                        table["source"][i], label, f"{PREFIX}{which}", detail
                    )
        return GlobalFindings(found)
