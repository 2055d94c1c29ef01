"""Lightning callbacks: the history writer and per-epoch seeding."""
