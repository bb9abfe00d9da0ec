"""JSON Schemas of the manifests, generated from the models.

`python -m reconciler.schemas [DIR]` (re)writes `schemas/*.schema.json`; a test regenerates them and
fails when the committed files drift from the models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from .models import MANIFEST_MODELS, ReleaseLock

SCHEMA_BASE = "https://stella.dev/schemas/v1/"


def generate() -> dict[str, str]:
    """File name -> schema text, for every manifest kind and the release lock."""
    models: dict[str, type[BaseModel]] = {**MANIFEST_MODELS, "ReleaseLock": ReleaseLock}
    out = {}
    for kind, model in sorted(models.items()):
        schema = model.model_json_schema(mode="validation")
        name = f"{kind.lower()}.schema.json"
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": SCHEMA_BASE + name,
            **schema,
        }
        out[name] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def main(argv: list[str]) -> int:
    target = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "schemas"
    target.mkdir(parents=True, exist_ok=True)
    for name, text in generate().items():
        (target / name).write_text(text)
        print(f"wrote {target / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
