"""Model access for every stage that calls a model: one client for every role and backend, with a disk cache,
retries, structured output, log-probabilities, the Batch API and usage accounting.

    from delib.models import ModelClient, ChatRequest, ChatResult
"""
from delib.models.cache import CallCache, call_key
from delib.models.calls import ChatRequest, ChatResult, TokenLogprob
from delib.models.client import ModelClient
from delib.models.fake import scripted_transport
from delib.models.servers import EmbeddedServer, ServerError, embedded_model_path
from delib.models.structured import gbnf_for, openai_response_format, parse_reply, response_schema
from delib.models.usage import Usage, add_usage, read_usage
from delib.models.wire import ModelAuthError, ModelCallsFailed

__all__ = [
    "CallCache", "ChatRequest", "ChatResult", "EmbeddedServer", "ModelAuthError", "ModelCallsFailed", "ModelClient",
    "ServerError",
    "TokenLogprob", "Usage", "add_usage", "call_key", "embedded_model_path", "gbnf_for", "openai_response_format",
    "parse_reply", "read_usage", "response_schema", "scripted_transport",
]
