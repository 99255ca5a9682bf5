"""Cross-validation: data, split, augmentation, the training loop and the fold runner."""
import os

import cv2

# albumentations checks PyPI for a newer version at import: offline kernels only get a warning.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# OpenCV's own thread pool, in every DataLoader worker, oversubscribes the cores (on a
# 16-core GPU box the loader, not the GPU, set the pace). Turning it off here, before any
# pool exists, is also what keeps forked workers from deadlocking on an inherited pool.
cv2.setNumThreads(0)
