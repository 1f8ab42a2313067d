"""Any server with OpenAI's ``/v1/embeddings``: vLLM, Ollama, llama.cpp's ``llama-server``…

The protocol is :class:`~flowserve.knowledge.embedders.openai.OpenAIEmbedder`'s (the same
SDK); this one changes where (``base_url`` of the ``openai-compatible`` settings section,
required, checked by the server's :class:`~flowserve.providers.endpoints.EndpointPolicy`,
``allowed_base_urls``, and rebuilt from its parsed parts) and with which key (optional:
``api_key_env``; without one a placeholder is sent, as these servers usually ignore it).
Any model name is passed through.
"""

from __future__ import annotations

from flowserve.knowledge.embedders.openai import OpenAIEmbedder
from flowserve.providers.endpoints import EndpointError


class OpenAICompatibleEmbedder(OpenAIEmbedder):
    name = "openai-compatible"
    batch_size = 64
    default_key_env = None

    def base_url(self) -> str | None:
        url = self.env.settings.get("base_url")
        if not url:
            return None
        try:
            return self.policy.check_base_url(str(url))
        except EndpointError:
            return None

    def problem(self, model: str) -> str | None:
        if not model:
            return "model must not be empty"
        url = self.env.settings.get("base_url")
        if not url:
            return f"{self.name} has no base_url in its settings on this server"
        try:
            self.policy.check_base_url(str(url))
        except EndpointError as exc:
            return f"{self.name} base_url {exc}"
        return None

    def dimensions(self, model: str) -> int | None:
        return None  # known from the first answer
