"""Helpers for the Llama 3.2 Vision LoRA notebook series.

Each notebook imports what it teaches from here; every function has unit tests in tests/.
"""

__version__ = "0.1.0"
