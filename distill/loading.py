"""The one way the project's commands load a model, and the one rule for the pad and end-of-sequence ids they
generate with.

A spec is anything `hybrid.load_pretrained` reads (hybrid folder, HF folder or id, released MambaInLlama/M1
folder, .gguf, the alias smollm2-135m), optionally with `@attn=R`: the model converted on the fly to a hybrid
keeping a fraction R of its layers as attention (uniform selection, transfer-initialised weights), which is enough
to benchmark or smoke-test a ratio without a distillation run. The conversion's random initialisations (the mixers'
parameters the transfer does not set) are seeded apart from the caller's random state, so one spec is one model in
every process: benchmarks that train it start from the same weights run after run.
"""
from __future__ import annotations

from hybrid import load_pretrained
from hybrid.attention import use_document_attention

from .conversion.select import uniform_attention_layers
from .conversion.transfer import hybridize


def load_model(spec: str, need_tokenizer: bool = False, dtype=None, for_training: bool = False):
    """(model, tokenizer or None, label) for `spec` (`path[@attn=R]`), in `dtype` (None: as stored, float32 for
    GGUF); the label is the spec as given.

    need_tokenizer: a spec without one is a ValueError (rather than a failure at the first encode).
    for_training: the parameters stay trainable, and a tokenizer without a pad token pads with its EOS (TRL pads
    batches through the tokenizer, so the id has to live there); otherwise the model is frozen for inference."""
    if not isinstance(spec, str):
        raise ValueError(f"model spec {spec!r} is not a string")
    base, _, opt = spec.partition("@")
    if opt and not opt.startswith("attn="):
        raise ValueError(f"model spec {spec!r}: the only option is @attn=<ratio>")
    model, tok = load_pretrained(base, dtype=dtype)
    if (need_tokenizer or for_training) and tok is None:
        raise ValueError(f"model spec {spec!r} has no tokenizer (save one beside the model): this command needs it "
                         "to encode text")
    if opt:
        import torch
        with torch.random.fork_rng(devices=[]):  # the mixers' random parts are seeded: one spec, one model
            torch.manual_seed(0)
            model = hybridize(model, uniform_attention_layers(model.config.num_hidden_layers,
                                                              _ratio(spec, opt))).eval()
    if for_training:
        use_document_attention(model)  # packed rows attend per document, without a dense [T x T] mask
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    else:
        model.requires_grad_(False)
    return model, tok, spec


def _ratio(spec: str, opt: str) -> float:
    try:
        return float(opt[len("attn="):])
    except ValueError:
        raise ValueError(f"model spec {spec!r}: @attn= takes a number, the fraction of layers kept as attention") \
            from None


def pad_and_eos(model, tok) -> tuple[int, list[int]]:
    """(pad id, end ids) to generate with `model` and its tokenizer `tok`.

    End ids: every id that either the model's generation config or the tokenizer names as an end. The tokenizer's
    EOS is what a chat template closes a turn with; a generation config may list more (Llama 3 names <|eot_id|>
    beside <|end_of_text|>), or none; stopping only at one of the two lists runs past an end the other names.

    Pad: the tokenizer's pad, else its EOS, else the first end id, else 0. The engine masks pads and never returns
    them, so there any id in the vocabulary does; transformers' generate fills finished rows with it, where an EOS
    is dropped by `decode(skip_special_tokens=True)` and an ordinary token would turn into text."""
    configured = model.generation_config.eos_token_id
    ends = set([configured] if isinstance(configured, int) else (configured or []))
    if tok.eos_token_id is not None:
        ends.add(tok.eos_token_id)
    eos = sorted(ends)
    pad = next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), eos[0] if eos else 0)
    return pad, eos
