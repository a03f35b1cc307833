"""placeholder"""
import hashlib
import json
from pathlib import Path


def reseal(art: Path) -> None:
    """Record the current sha256 of an artifact's tensor file in its manifest (what a deliberate edit does)."""
    from trtq.artifact import MANIFEST, SCALES

    m = json.loads((art / MANIFEST).read_text())
    data = (art / SCALES).read_bytes()
    m["scales"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (art / MANIFEST).write_text(json.dumps(m))
