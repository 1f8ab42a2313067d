"""LLM providers. Each provider is one module plus one entry-point registration.

The core only knows :class:`~flowserve.providers.base.Provider` and the registry; it never
names a concrete provider.
"""

from flowserve.providers.base import LLMRequest, Message, Provider, ProviderEnv, Usage
from flowserve.providers.registry import ProviderRegistry

__all__ = ["LLMRequest", "Message", "Provider", "ProviderEnv", "ProviderRegistry", "Usage"]
