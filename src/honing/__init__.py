"""Honing: fine-tune pre-trained language models on your own examples, and prove it helped."""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes (which peft imports when it is installed) logs a warning at import on CPUs with AVX512-BF16
# when the optional `kernels` package, which downloads kernels from a model hub, is absent. Honing never
# fetches from a hub, and 4-bit runs without it, so the message is noise.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
