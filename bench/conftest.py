import numpy as np
import pytest


@pytest.fixture(scope="session")
def kv16():
    """Llama-3-8B-like K for one layer chunk: 8 kv heads x 4096 tokens x d128, fp16 (8 MiB)."""
    rng = np.random.default_rng(0)
    return (rng.standard_normal((1, 8, 4096, 128)) * 2).astype(np.float16)
