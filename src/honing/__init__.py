"""Honing: fine-tune pre-trained language models on your own examples, and prove it helped."""

__version__ = "0.1.0"

import logging as _logging

# Before anything imports PEFT (which imports bitsandbytes, a dependency for method qlora): bitsandbytes
# logs a warning at import on AVX512-BF16 CPUs when the optional hub-kernel package is absent. Honing never
# fetches kernels from a hub and 4-bit runs without it (honing.quiet explains the other filters).
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
