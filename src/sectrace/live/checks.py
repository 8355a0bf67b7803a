"""What one request may ask of the service: each breach of a limit or the vocabulary is one sentence and a 4xx.

Why apart from the routes: the same checks guard sessions, stateless calls and generation, and they run
in the worker thread with the body's decoding, before anything is booked or allocated.
"""

from __future__ import annotations

from ..protocol import Accept, PolicyError
from . import wire
from .state import ServiceState
from .wire import WireError


def accept_of(text: str) -> Accept:
    """The acceptance rule a request names, or 422."""
    try:
        return Accept.parse(text)
    except PolicyError as exc:
        raise WireError(422, f"accept: {exc}") from None
    except (ValueError, OverflowError):  # rank:inf / rank:nan pass Accept.parse and fail in int()
        raise WireError(422, f"accept: cannot read acceptance rule {text[:40]!r}; write top1, rank:20 or "
                             "prob:0.1") from None


def session_inputs(st: ServiceState, body) -> tuple[list[int], dict]:
    """The prompt and the model's first-pass inputs (features, audio) of a request that starts a cache."""
    limits = st.limits
    if len(body.prompt) > limits.max_prompt:
        raise WireError(413, f"prompt: {len(body.prompt)} tokens is over the limit of {limits.max_prompt}")
    st.cloud.check_ids(body.prompt, "prompt")
    feats = None
    if body.features:
        feats = {k: wire.tensor_from_wire(v, limits.max_feature_elements) for k, v in body.features.items()}
    return list(body.prompt), st.cloud.kwargs_for(body.mode, feats, body.audio)


def check_block(st: ServiceState, draft, context: int) -> None:
    """A drafted block: not too long, in the vocabulary, and within the context after ``context`` tokens."""
    limits = st.limits
    if len(draft) > limits.max_draft:
        raise WireError(413, f"draft: {len(draft)} tokens is over the limit of {limits.max_draft} per block")
    st.cloud.check_ids(draft, "draft")
    if context + len(draft) > limits.max_context:
        raise WireError(413, f"the session would hold {context + len(draft)} tokens, over the limit of "
                             f"{limits.max_context}; start a new session")


def generation_inputs(st: ServiceState, body) -> tuple[list[int], dict]:
    """Cloud-only decoding: its length, then the prompt's inputs, then the prompt plus that length, within the limits."""
    limits = st.limits
    if body.max_new_tokens > limits.max_new_tokens:
        raise WireError(413, f"max_new_tokens {body.max_new_tokens} is over the limit of {limits.max_new_tokens}")
    prompt, kwargs = session_inputs(st, body)
    if len(prompt) + body.max_new_tokens > limits.max_context:
        raise WireError(413, f"prompt plus max_new_tokens is over the context limit of {limits.max_context}")
    return prompt, kwargs
