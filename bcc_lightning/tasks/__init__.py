"""One module per command, each a `run(cfg)` behind the guarded Hydra entry (tasks/entry.py). Tasks compose the
wings (data, models, callbacks, reports) and utils; nothing imports a task."""
