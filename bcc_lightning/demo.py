"""`python -m bcc_lightning.demo out=demo_data`: write the synthetic demo dataset."""

from bcc_lightning.data.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
