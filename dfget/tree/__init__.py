"""`dfget -r URL/ -o DIR`: a whole tree of files, each its own download (and task).

The data flow: a `Lister` (`entries.py`: the interface; `httpindex.py`: nginx
autoindex pages, HTML or JSON, parsed by `index.py`) names the files; `globs.py`
keeps the ones --include/--exclude select; `paths.py` turns each relative path into
a safe local path under DIR; `manifest.py` says which are already complete and
unchanged upstream; `run.py` downloads the rest, -j at once, each with the ordinary
`dfget.engine.download`; `results.py` holds what happened, and `command.py` is the
CLI's side (imported by `dfget.cli` only when -r is given). `listers.py` picks the
lister by URL scheme.
"""
