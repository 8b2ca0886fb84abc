"""Test-suite settings: everything runs offline, on tiny models built from configs.

``HF_EXPEDITE_TEST_THREADS=N`` runs the suite with N intra-op threads (CI runs it with 1 and with the default), to show
that nothing depends on how the kernels split their work.
"""

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("HF_EXPEDITE_TEST_THREADS"):
    torch.set_num_threads(int(os.environ["HF_EXPEDITE_TEST_THREADS"]))
