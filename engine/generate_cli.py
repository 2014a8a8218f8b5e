"""`pagedserve generate`: offline generation from the command line."""
import argparse


def add_parser(subparsers) -> None:
    from pagedserve.engine.arg_utils import add_engine_args
    p = subparsers.add_parser("generate", help="generate continuations of prompts offline",
                              description="Generate continuations of prompts offline.")
    p.add_argument("prompts", nargs="+", help="prompt text(s)")
    p.add_argument("--model", default=None,
                   help="model folder or hub id (default: bundled stories260K)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens to generate per prompt")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    add_engine_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pagedserve.engine.arg_utils import engine_kwargs_from_args
    from pagedserve.engine.llm import LLM
    from pagedserve.engine.sampling_params import SamplingParams
    llm = LLM(args.model, **engine_kwargs_from_args(args))
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                            top_p=args.top_p, top_k=args.top_k)
    for out in llm.generate(args.prompts, params, use_tqdm=False):
        print(f"{out.prompt}{out.outputs[0].text}")
    return 0
