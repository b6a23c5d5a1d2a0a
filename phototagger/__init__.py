"""Photo Tagger: tag photos with vision-language models, measure them, improve them."""
from phototagger import bootstrap

bootstrap.apply()  # before any flow or tool imports metaflow: a user name and one datastore, from any directory

__version__ = "0.1.0"
