"""Train a benign/malignant classifier: `python train.py [model=densenet121] [experiment=demo] [-m ...]`."""

from bcc_lightning.tasks.entry import train

if __name__ == "__main__":
    train()
