"""Code shared by the scripts in the repository's `recipes/` folder, importable from an installed package.

- `arguments`: data/output argument dataclasses, `CONFIG.yaml + flags` parsing, numeric checks, the recorded
  (secret-free) launch command;
- `data`: local files / Hub datasets with errors that name the file and column, labels, tokenisation;
- `models`: model paths, the student's tokenizer, building the student;
- `output`: the output folder (checks, lock, manifest of what runs wrote, overwrite that removes only that and never
  an input, resume from the newest complete checkpoint, atomic save);
- `evaluation`: teacher and student on the same batches;
- `run`: the common start (`start_run`), training (`Run.train`) and end (`Run.finish`) of a recipe's `main()`;
- `cache_cli`: the command line of `python -m hf_distill.cache` (caching a teacher's outputs).
"""
