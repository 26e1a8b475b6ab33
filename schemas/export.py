"""Export the JSON Schemas of record kinds to ``schemas/json`` (a test fails when they are stale)."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.records import RECORD_CLASSES

JSON_DIR = Path(__file__).parent / "json"


def record_json_schemas() -> dict[str, str]:
    """File name -> JSON text, for every record kind."""
    out = {}
    for kind, cls in RECORD_CLASSES.items():
        schema = cls.model_json_schema(mode="validation")
        schema["properties"] = {"kind": {"const": kind, "type": "string"}, **schema["properties"]}
        schema["$id"] = f"vlm-curation/{kind}.schema.json"
        out[f"{kind}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def write_record_json_schemas(directory: Path = JSON_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in record_json_schemas().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_record_json_schemas():
        print(p)
