"""Suite-wide guards.

A test that leaves torch's global autograd mode off (a script's ``torch.set_grad_enabled(False)``
called in-process) makes every later training test fail with "element 0 of tensors does not require
grad", far from the cause. This guard fails the leaking test itself, and restores the mode so the
rest of the suite still says something.
"""
import pytest
import torch


@pytest.fixture(autouse=True)
def _grad_mode_is_restored():
    yield
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("this test left torch's global grad mode disabled")
