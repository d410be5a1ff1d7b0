"""Loading tokenizers (hub name or local folder) and giving them a dedicated pad token."""

from __future__ import annotations

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from saferl.models.spec import TRUST_REMOTE_CODE_KEY
from saferl.models.untrusted import check_remote_code

__all__ = ["PAD_TOKEN", "ensure_pad_token", "load_tokenizer"]

#: The token :func:`ensure_pad_token` adds when a tokenizer has no usable pad token.
PAD_TOKEN = "<pad>"

_PADDING_SIDES = ("right", "left")


def load_tokenizer(
    source: str,
    revision: str | None = None,
    trust_remote_code: bool = False,
    padding_side: str = "right",
    trust_remote_code_key: str | None = TRUST_REMOTE_CODE_KEY,
) -> PreTrainedTokenizerBase:
    """Load a tokenizer with ``AutoTokenizer`` from a hub name or a local folder.

    Args:
        source: hub name or folder holding ``tokenizer.json`` / ``tokenizer_config.json``.
        revision: hub revision to pin (ignored for local folders).
        trust_remote_code: allow the tokenizer's own Python code to run; off by default.
        padding_side: ``"right"`` (default: training batches, score models read the last
            non-padding token) or ``"left"`` (batched generation prompts).
        trust_remote_code_key: the config key named when a folder needing its own code is
            refused (:func:`~saferl.models.untrusted.check_remote_code`).

    Returns:
        The tokenizer. Its pad token is left as found; call :func:`ensure_pad_token`.
    """
    if padding_side not in _PADDING_SIDES:
        raise ValueError(
            f"padding_side must be one of {list(_PADDING_SIDES)}, got {padding_side!r}"
        )
    check_remote_code(source, trust_remote_code, key=trust_remote_code_key, revision=revision)
    tokenizer = AutoTokenizer.from_pretrained(
        source, revision=revision, trust_remote_code=trust_remote_code
    )
    tokenizer.padding_side = padding_side
    return tokenizer


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Give ``tokenizer`` a dedicated pad token (``<pad>``) when it lacks one.

    A tokenizer whose pad token *is* its EOS token (a common shortcut) is treated as lacking one.
    EOS is never reused as padding: score models read the sequence score at the last non-pad
    token, and every response ends with EOS, so a pad-equals-EOS tokenizer makes "last non-pad"
    skip the response's own EOS (and makes pad-id detection, as in plain transformers'
    ``*ForSequenceClassification``, pick the wrong position); policies would also learn to emit
    EOS only as padding.

    The tokenizer may grow by one token; the model builders resize embeddings to match.

    Returns:
        True when the pad token was set here, False when the tokenizer already had a distinct one.
    """
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError(
            f"could not give the tokenizer a pad token distinct from EOS: {PAD_TOKEN!r} maps to "
            f"id {tokenizer.pad_token_id}, EOS is id {tokenizer.eos_token_id}"
        )
    return True
