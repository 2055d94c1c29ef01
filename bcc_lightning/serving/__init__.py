"""HTTP serving of a checkpoint (bcc-serve): LitServe API, model card and a browser page."""
