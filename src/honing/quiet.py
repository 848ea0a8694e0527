"""Keep the libraries' noise out of the terminal: weight-loading progress bars, deprecation warnings
raised inside transformers/PEFT on our behalf, and optional-kernel notices. Honing's own messages say
what matters (device, dtype, which LoRA path, what was chosen and why).

Called before every model load (``honing.models.loading.load_model``): cheap and idempotent, and a
warnings filter reset in between (pytest does that per test) is set again.
"""

from __future__ import annotations

import logging
import warnings


def quiet_libraries() -> None:
    # transformers 5 draws a "Loading weights" bar per model load; a CLI that loads 2-3 models per
    # command (train, then eval's base + adapter) would print a screen of them.
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    # PEFT probes `model.is_gradient_checkpointing`, which transformers 5 deprecates in favour of
    # `is_activation_checkpointing`: a FutureWarning about PEFT's code, not the user's.
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
    # bitsandbytes on AVX512-BF16 CPUs tries a hub kernel for 4-bit GEMM and logs a warning when it is
    # absent; Honing never fetches from a hub and falls back to the built-in kernel.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
