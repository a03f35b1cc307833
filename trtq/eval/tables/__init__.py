"""Scripts that produce the evaluation tables in docs/ (one command each, named beside its table)."""

from __future__ import annotations

from pathlib import Path


def write_generated_block(path: Path, body: str, command: str, begin: str, end: str, title: str) -> None:
    """Put `body` (with the command that made it) between the markers `begin`/`end` of doc `path`, keeping the
    prose around them; a doc without the markers gets the block appended, a missing doc starts as `# title`
    plus the block."""
    block = f"{begin}\nCommand: `{command}`\n\n{body}\n{end}"
    text = path.read_text() if path.is_file() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    elif text:
        text = text.rstrip("\n") + f"\n\n{block}\n"  # e.g. a new named section of an existing doc
    else:
        text = f"# {title}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def guidance_of(part: dict) -> float:
    """The guidance scale a table slice sampled with (the zoo model's own; slices written before it was
    recorded hold none, and used the zoo's)."""
    if "guidance" in part:
        return part["guidance"]
    from trtq.zoo import load_model

    return load_model(part["model"]).guidance_scale
