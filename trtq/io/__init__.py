"""Everything trtq reads from or writes to disk goes through here.

- `files`:    safe reading (regular files only, bounded size and nesting), JSON/YAML parsing as one-line errors
- `validate`: typed schemas checked before a document is used
- `atomic`:   directory and file writes that are atomic, locked and self-cleaning
- `fuzz`:     the seeded mutation fuzzer that holds the readers to their promises
"""
