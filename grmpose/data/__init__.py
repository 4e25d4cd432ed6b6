"""Data: COCO-format datasets, augmentation, targets and the synthetic crowd generator."""
