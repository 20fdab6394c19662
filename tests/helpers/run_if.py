"""``@requires_cuda``: a test that needs a CUDA GPU (lightning-hydra-template's ``RunIf(min_gpus=1)``).

It is marked ``cuda`` (select with ``-m cuda`` on a GPU machine) and skips, saying why, without one."""

import pytest
import torch


def requires_cuda(test):
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
    return pytest.mark.cuda(skip(test))
