import torch

from honing.precision import auto_dtype, bf16_is_fast


def test_explicit_names_resolve():
    assert auto_dtype("bf16") is torch.bfloat16
    assert auto_dtype("float32") is torch.float32


def test_auto_follows_the_measured_race():
    assert auto_dtype("auto") is (torch.bfloat16 if bf16_is_fast("cpu") else torch.float32)
