"""What the TRL-driven stages (sft.py, rl.py, dpo.py) share: load the model, train resumably, save the result."""
from __future__ import annotations

import json
import os
from dataclasses import asdict


def load_with_tokenizer(spec: str):
    """(model, tokenizer) from any load_pretrained spec; a tokenizer is required (pad falls back to EOS)."""
    from hybrid import load_pretrained
    model, tok = load_pretrained(spec)
    if tok is None:
        raise ValueError(f"{spec} has no tokenizer")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def train_and_save(trainer, tokenizer, args, resume: bool, name: str) -> str:
    """Train (from the last checkpoint in args.out when resume and one exists); save the model and tokenizer to
    args.out/final and the stage's arguments to args.out/{name}_args.json; return the final folder."""
    has_ckpt = os.path.isdir(args.out) and any(d.startswith("checkpoint-") for d in os.listdir(args.out))
    trainer.train(resume_from_checkpoint=True if resume and has_ckpt else None)
    final = os.path.join(args.out, "final")
    trainer.save_model(final)  # every rank calls it (it gathers sharded weights); rank 0 writes
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(final)
        with open(os.path.join(args.out, f"{name}_args.json"), "w") as f:
            json.dump(asdict(args), f, indent=1)
    trainer.accelerator.wait_for_everyone()
    return final
