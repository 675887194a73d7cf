"""Whether torch.compile gains on top of the csrc few-rows kernel: the decode step compiled with the kernel as a
torch.library custom op (so the compiled graph keeps the packed weights), against the uncompiled static step with
the kernel and the compiled step on F.linear (what `--decode compiled` runs). Teacher, batch 16, 64 + 48 tokens,
the second generate() call of each timed (the first compiles).

    python recipes/smollm2-135m/compiled_kernel_probe.py [--dtype float32]

A probe, not an engine path: the engine does not combine packing with decode="compiled" (hybrid.generation)."""
import argparse

import torch

import hybrid.generation as generation
import hybrid.prepack as prepack
from distill.loading import load_model


@torch.library.custom_op("hybrid_probe::skinny_linear", mutates_args=())
def skinny_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, n: int) -> torch.Tensor:
    return prepack._skinny().skinny_linear_cpu(x, packed, bias, n)


@skinny_linear.register_fake
def _(x, packed, bias, n):
    return x.new_empty((*x.shape[:-1], n))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    a = ap.parse_args()
    real_call = prepack._SkinnyForward.__call__

    def traced_call(self, x):
        m = self.module
        if torch.is_grad_enabled() or x.dtype != m.weight.dtype or x.numel() > prepack.SKINNY_ROWS * x.shape[-1]:
            return real_call(self, x)
        return torch.ops.hybrid_probe.skinny_linear(x, self.packed, m.bias, m.out_features)
    prepack._SkinnyForward.__call__ = traced_call
    generation.decode_prepack = lambda mode, packing: packing  # let "compiled" run on packed weights, here only
    model, _, _ = load_model("smollm2-135m", dtype=getattr(torch, a.dtype))
    prompts = torch.randint(100, 30000, (16, 64), generator=torch.Generator().manual_seed(0)).tolist()
    params = generation.SamplingParams(max_new_tokens=48)
    outs = {}
    for mode, packing in [("static", "csrc"), ("compiled", "csrc"), ("compiled", False)]:
        first = generation.generate(model, prompts, params, eos_token_id=[], decode=mode, prepack=packing)
        out = generation.generate(model, prompts, params, eos_token_id=[], decode=mode, prepack=packing)
        outs[(mode, packing)] = out
        print(f"{mode:8s} linears {out.linear:12s} decode {1000 * out.decode_seconds / 47:.1f} ms/token "
              f"(compilation {first.compile_seconds:.1f} s)", flush=True)
    same = sum(x == y for x, y in zip(outs[("static", "csrc")].sequences, outs[("compiled", "csrc")].sequences))
    print(f"greedy rows equal between static and compiled with the kernel: {same} of {len(prompts)}")


if __name__ == "__main__":
    from distill.allocator import rerun_under_tcmalloc
    rerun_under_tcmalloc()  # timed as the command line runs: on tcmalloc where installed
    main()
