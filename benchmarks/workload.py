"""Benchmark workloads with fixed seeds: random token prompts, or ShareGPT conversations.

Lengths are drawn uniformly from inclusive ranges: mixed prompt and output lengths are the
realistic case, and the one where continuous batching pays off against padded batches.
"""
import json
import random
from dataclasses import dataclass


@dataclass(slots=True)
class BenchRequest:
    """One request of a workload; output_len tokens are generated exactly (EOS ignored)."""
    prompt_token_ids: list[int]
    output_len: int
    prompt: str | None = None  # the text, when the workload came from text

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


def parse_range(text: str | int) -> tuple[int, int]:
    """'128' -> (128, 128); '32-512' -> (32, 512); lengths are positive and lo <= hi."""
    parts = str(text).split("-")
    try:
        lo, hi = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (0, -1)
    except ValueError:
        lo, hi = 0, -1
    if lo < 1 or hi < lo:
        raise ValueError(f"a length must be N or LO-HI with 1 <= LO <= HI, got {text!r}")
    return lo, hi


def random_requests(num: int, input_len: tuple[int, int], output_len: tuple[int, int],
                    vocab_size: int, seed: int = 0,
                    exclude_ids: frozenset[int] = frozenset()) -> list[BenchRequest]:
    """num requests of random token ids (never one of exclude_ids, e.g. BOS/EOS/UNK)."""
    if num < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num}")
    allowed = [t for t in range(vocab_size) if t not in exclude_ids]
    if not allowed:
        raise ValueError("no token ids left to draw prompts from")
    rng = random.Random(seed)
    out = []
    for _ in range(num):
        n_in, n_out = rng.randint(*input_len), rng.randint(*output_len)
        out.append(BenchRequest([rng.choice(allowed) for _ in range(n_in)], n_out))
    return out


def sharegpt_requests(path: str, num: int, tokenizer, seed: int = 0,
                      output_len: tuple[int, int] | None = None,
                      max_prompt_len: int = 1024, max_total_len: int = 2048) -> list[BenchRequest]:
    """First human turn as the prompt; the reply's token count (or a drawn output_len) as the
    output length. Too short (< 4 tokens) or too long conversations are skipped."""
    with open(path) as f:
        data = json.load(f)
    convs = [d.get("conversations") or d.get("conversation") or [] for d in data]
    pairs = [(c[0]["value"], c[1]["value"]) for c in convs if len(c) >= 2]
    random.Random(seed).shuffle(pairs)
    rng = random.Random(seed + 1)
    out = []
    for prompt, reply in pairs:
        ids = tokenizer.encode(prompt)
        n_out = rng.randint(*output_len) if output_len else len(tokenizer.encode(reply))
        if (len(ids) < 4 or n_out < 4 or len(ids) > max_prompt_len
                or len(ids) + n_out > max_total_len):
            continue
        out.append(BenchRequest(ids, n_out, prompt))
        if len(out) == num:
            return out
    raise ValueError(f"{path} has only {len(out)} usable conversations, {num} were asked for")


def check_fits(requests: list[BenchRequest], max_model_len: int) -> None:
    """ValueError naming the first request whose prompt + output exceeds the context."""
    for i, r in enumerate(requests):
        if r.prompt_len + r.output_len > max_model_len:
            raise ValueError(f"request {i} needs {r.prompt_len} + {r.output_len} tokens but the "
                             f"model's context is {max_model_len}; use shorter --input-len/"
                             f"--output-len or a model with a longer context")


def token_counts(requests: list[BenchRequest]) -> tuple[int, int]:
    """(prompt tokens, output tokens) of a workload."""
    return sum(r.prompt_len for r in requests), sum(r.output_len for r in requests)


def model_facts(model_path: str) -> tuple[int, int, frozenset[int]]:
    """(vocab size, context length, special token ids) from a model folder's config.json."""
    with open(f"{model_path}/config.json") as f:
        c = json.load(f)
    special = set()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        v = c.get(key)
        special.update(v if isinstance(v, list) else [] if v is None else [v])
    return c["vocab_size"], c.get("max_position_embeddings", 2048), frozenset(special)


def load_workload(args, model_path: str, max_model_len: int | None = None) -> list[BenchRequest]:
    """The workload the flags describe (--dataset, --num-prompts, --input-len, --output-len,
    --seed), checked to fit the model's context."""
    vocab, context, special = model_facts(model_path)
    if args.dataset == "random":
        reqs = random_requests(args.num_prompts, parse_range(args.input_len),
                               parse_range(args.output_len), vocab, args.seed, special)
    elif args.dataset == "sharegpt-json":
        if not args.dataset_path:
            raise ValueError("--dataset sharegpt-json needs --dataset-path FILE")
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(model_path)
        out_range = parse_range(args.output_len) if args.output_len else None
        reqs = sharegpt_requests(args.dataset_path, args.num_prompts, tok, args.seed, out_range,
                                 max_total_len=max_model_len or context)
    else:
        raise ValueError(f"unknown dataset {args.dataset!r}; choose random or sharegpt-json")
    check_fits(reqs, max_model_len or context)
    return reqs
