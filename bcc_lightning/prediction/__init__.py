"""Prediction on files: what bcc-predict does with a folder of images (walk it, decode in loader workers, score,
write predictions.csv and Grad-CAM overlays). It composes data, models and reports, and no task: bcc-predict and the
benchmarks import it from here."""
