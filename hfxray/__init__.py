"""hfxray: chest X-ray classification (Covid / Normal / Viral Pneumonia) on the Hugging Face stack.

Research software, not a diagnostic device.
"""

__version__ = "0.1.0"

DISCLAIMER = (
    "Research software, not a diagnostic device: these probabilities must not be used "
    "for diagnosis or treatment decisions."
)

__all__ = ["DISCLAIMER", "__version__"]
