"""Torch-free side that ships to the device: preprocessing, postprocessing, COCO evaluation, runtimes.

Python 3.8+, numpy, pillow and pycocotools only (plus whichever runtime is asked for).
"""
