"""Data: formats, validation, curation, chat rendering with loss masks, packing, statistics."""
