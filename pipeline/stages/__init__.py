"""The pipeline's stages, one module each, named for the stage it runs (train: teacher and student)."""
