"""Suite-wide settings: tiny models run fastest, and identically, on one thread."""

import torch

torch.set_num_threads(1)
