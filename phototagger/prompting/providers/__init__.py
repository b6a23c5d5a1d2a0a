"""Model backends behind one interface, chosen by name (see base.py for the contract).

Importing this package registers the API providers and the offline baselines; the
`finetuned` provider is registered lazily, so torch is imported only when it is asked for.
"""
from phototagger.prompting.providers import baselines, openai_api  # noqa: F401 - imported to register their providers
from phototagger.prompting.providers.base import (
    Answer,
    MissingKeyError,
    Provider,
    ProviderError,
    known_providers,
    make_provider,
    provider_class,
    reads_prompt,
    register_lazy_provider,
    register_provider,
)

register_lazy_provider("finetuned", "phototagger.prompting.providers.finetuned")

__all__ = [
    "Answer",
    "MissingKeyError",
    "Provider",
    "ProviderError",
    "known_providers",
    "make_provider",
    "provider_class",
    "reads_prompt",
    "register_lazy_provider",
    "register_provider",
]
