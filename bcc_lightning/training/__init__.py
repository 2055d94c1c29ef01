"""Running training: assembling a run from its config (assemble), the linear probe (probe) and the timed steps
bcc-bench and benchmarks/ measure (speed). Above the wings it composes (data, models, callbacks, reports), below
the tasks that call it; it imports no task."""
