"""Photo Tagger: tag photos with vision-language models, measure them, improve them."""

__version__ = "0.1.0"
