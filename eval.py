"""Evaluate a checkpoint: `python eval.py ckpt=PATH [split=test] [data.root=ROOT]`."""

from bcc_lightning.tasks.entry import evaluate

if __name__ == "__main__":
    evaluate()
