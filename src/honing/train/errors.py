"""Errors the training loop raises; each is a HoningError, so the CLI prints one clear line."""

from honing.errors import HoningError


class TrainingError(HoningError):
    """Training cannot go on: repeated non-finite losses/gradients, a non-finite weight, a bad resume."""
