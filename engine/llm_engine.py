"""LLMEngine: requests in, RequestOutputs out, one scheduler step at a time."""
import bisect
import logging
import time
from dataclasses import dataclass

from pagedserve.engine.block_manager import BlockManager
from pagedserve.engine.config import EngineConfig
from pagedserve.engine.executor import make_executor
from pagedserve.engine.outputs import RequestOutput
from pagedserve.engine.processor import EngineCoreRequest, InputProcessor, ParentRequest
from pagedserve.engine.prompt_logprobs import logit_counts, take_prompt_logprobs
from pagedserve.engine.request import Request
from pagedserve.engine.sampler import Sampler
from pagedserve.engine.sampling_params import RequestOutputKind, SamplingParams
from pagedserve.engine.scheduler import Scheduler
from pagedserve.engine.step_input import StepInput
from pagedserve.engine.structured_output.manager import StructuredOutputManager
from pagedserve.engine.tokenizer import PromptType, load_tokenizer

__all__ = ["EngineCoreRequest", "EngineStats", "LLMEngine", "ParentRequest"]
logger = logging.getLogger(__name__)


@dataclass(slots=True)
class EngineStats:
    """The engine's gauges now and its counters so far (what /metrics reports); the default
    is the engine before its first request."""
    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    num_preemptions: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    num_prompt_tokens: int = 0  # prompts fully prefilled
    num_generation_tokens: int = 0  # tokens sampled
    num_seqs_added: int = 0  # so a frontend can tell which of its sequences are in transit
    num_steps: int = 0
    num_gpu_blocks: int = 0  # the KV pool's size (vLLM's cache_config_info label)
    # tokens each step ran, as a histogram over ITERATION_TOKEN_BUCKETS (+Inf last): steps
    # per bucket, not cumulative, and the tokens' sum (vLLM's iteration_tokens_total)
    iteration_tokens: tuple[int, ...] = ()
    iteration_tokens_sum: int = 0


# vLLM's buckets for iteration_tokens_total
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class LLMEngine:
    """Synchronous engine core: add_request / step / abort_request / has_unfinished_requests."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._stopped = False
        self.tokenizer = load_tokenizer(config.tokenizer or config.model_path,
                                        config.trust_remote_code)
        self.processor = InputProcessor(config, self.tokenizer)
        self.eos_token_ids = self.processor.eos_token_ids
        self.executor = make_executor(config)
        num_blocks = self.executor.init_kv_cache()
        if num_blocks * config.block_size < config.max_model_len:
            self.executor.shutdown()
            raise ValueError(
                f"the KV cache holds {num_blocks * config.block_size} tokens ({num_blocks} "
                f"blocks of {config.block_size}), fewer than max_model_len "
                f"({config.max_model_len}); give it more memory or lower max_model_len")
        self.block_manager = BlockManager(num_blocks, config.block_size,
                                          config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs,
                                   config.max_num_batched_tokens)
        self.sampler = Sampler(config.seed)
        self.structured_outputs = StructuredOutputManager(
            config.structured_outputs_config, self.tokenizer, config.model_config.vocab_size,
            self.eos_token_ids)
        self.parents: dict[str, ParentRequest] = {}
        self.compiling: list[ParentRequest] = []  # waiting for their grammars, not scheduled
        self.totals = EngineStats()  # its counters; the gauges are read in stats()
        self.iteration_tokens = [0] * (len(ITERATION_TOKEN_BUCKETS) + 1)

    @classmethod
    def from_kwargs(cls, **kwargs) -> "LLMEngine":
        return cls(EngineConfig(**kwargs))

    def make_request(self, request_id: str | None, prompt: PromptType,
                     params: SamplingParams | None = None,
                     arrival_time: float | None = None) -> ParentRequest:
        """Tokenize and validate without touching engine state (safe from any thread)."""
        return self.processor.make_parent(
            self.processor.process(request_id, prompt, params, arrival_time))

    def add_parent(self, parent: ParentRequest) -> None:
        if parent.request_id in self.parents:
            raise ValueError(f"request id {parent.request_id!r} is already running")
        self.parents[parent.request_id] = parent
        self.totals.num_seqs_added += len(parent.children)
        constraint = parent.children[0].params.structured_outputs
        if constraint is not None:
            for req in parent.children:  # one matcher per sample; one compile for them all
                req.structured_output = self.structured_outputs.grammar_init(
                    constraint, req.prompt_token_ids)
            self.compiling.append(parent)
            return
        for req in parent.children:
            self.scheduler.add(req)

    def _schedule_compiled(self) -> list[RequestOutput]:
        """Requests whose grammars are compiled join the scheduler; a failed compile ends its
        request (the frontend validates constraints, so this is not the client's error)."""
        failed, waiting = [], []
        for parent in self.compiling:
            if parent.request_id not in self.parents:
                continue  # aborted while compiling
            sos = [r.structured_output for r in parent.children]
            if not all(so.is_ready() for so in sos):
                waiting.append(parent)
            elif (error := sos[0].error()) is not None:
                logger.error("request %s: grammar compile failed: %s", parent.request_id, error)
                for req in parent.children:
                    req.finish("abort")
                failed.append(self.parents.pop(parent.request_id).output())
            else:
                for req in parent.children:
                    self.scheduler.add(req)
        self.compiling = waiting
        return failed

    def add_request(self, request_id: str | None, prompt: PromptType,
                    params: SamplingParams | None = None) -> str:
        parent = self.make_request(request_id, prompt, params)
        self.add_parent(parent)
        return parent.request_id

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request wherever it is; all its KV blocks go back to the pool."""
        parent = self.parents.pop(request_id, None)
        if parent is None:
            return None
        self._govern(0, 0)
        for req in parent.children:
            if not req.finished:
                self.scheduler.abort(req)
                req.finish("abort")
        return parent.output()

    def has_unfinished_requests(self) -> bool:
        return bool(self.parents)

    def step(self) -> list[RequestOutput]:
        """Schedule, run the model once for the whole batch, sample, detokenize, stop."""
        self.totals.num_steps += 1
        failed = self._schedule_compiled() if self.compiling else []
        sched = self.scheduler.schedule()
        if not sched.requests:
            if self.compiling and not failed:
                self.structured_outputs.wait_for_compiles(
                    [r.structured_output for p in self.compiling for r in p.children], 0.01)
            return failed
        self._count_iteration(sum(sched.num_new_tokens))
        step = StepInput.from_scheduler_output(sched)
        step.logit_counts = logit_counts(sched)
        logits = self.executor.execute(step)
        if step.logit_counts is not None:
            logits = take_prompt_logprobs(sched, step.logit_counts, logits)
        rows = [i for i, (r, n) in enumerate(zip(sched.requests, sched.num_new_tokens))
                if r.num_computed_tokens + n == r.num_tokens]  # prompt done: sample a token
        touched = {}
        if rows:
            sampling = [sched.requests[i] for i in rows]
            logits = logits[rows]
            # before the sampler, as vLLM does: penalties, temperature, top-k/p and the
            # logprobs all see the constrained distribution
            self.structured_outputs.apply_bitmask(logits, [r.structured_output for r in sampling])
            result = self.sampler(logits, sampling)
            for req, token, lp in zip(sampling, result.token_ids, result.logprobs):
                self._append_token(req, token, lp)
                touched[req.parent_id] = self.parents[req.parent_id]
        self.scheduler.finish_step(sched)
        outputs = failed + self._collect(touched)
        self._govern(len(step.seq_lens), len(step.input_ids))
        return outputs

    def _govern(self, rows: int, tokens: int) -> None:
        # the thread governor times steps; not the wait for work after the last one
        governor = self.executor.governor
        if governor is not None:
            if rows:
                governor.tick(rows, tokens)
            if not self.parents:
                governor.pause()

    def _count_iteration(self, num_tokens: int) -> None:
        bucket = bisect.bisect_left(ITERATION_TOKEN_BUCKETS, num_tokens)
        self.iteration_tokens[bucket] += 1
        self.totals.iteration_tokens_sum += num_tokens

    def _append_token(self, req: Request, token: int, logprobs: dict[int, float] | None) -> None:
        req.token_ids.append(token)
        self.totals.num_generation_tokens += 1
        if req.first_token_time is None:
            req.first_token_time = time.monotonic()
            if req.index == 0:
                self.totals.num_prompt_tokens += req.num_prompt_tokens
        if logprobs is not None:
            req.logprobs.append(logprobs)
            req.cumulative_logprob += logprobs[token]
        p = req.params
        detok = self.parents[req.parent_id].detoks[req.index]
        so = req.structured_output
        if so is not None:
            self.structured_outputs.accept_token(so, token)
        may_stop = req.num_output_tokens >= p.min_tokens
        if may_stop and not p.ignore_eos and token in req.eos_token_ids:
            req.finish("stop")
        elif may_stop and token in p.stop_token_ids:
            req.finish("stop", token)
        elif (stop := detok.add(token, check_stop=may_stop)) is not None:
            req.finish("stop", stop)
        elif so is not None and so.is_terminated():  # e.g. with ignore_eos: nothing may follow
            req.finish("stop")
        elif req.num_output_tokens >= req.max_output_tokens:
            req.finish("length")

    def _collect(self, touched: dict[str, ParentRequest]) -> list[RequestOutput]:
        outputs = []
        for parent in touched.values():
            if (parent.output_kind is RequestOutputKind.FINAL_ONLY
                    and not all(r.finished for r in parent.children)):
                continue  # e.g. offline batches and non-streamed API requests
            out = parent.output()
            if out.finished:
                del self.parents[parent.request_id]
            outputs.append(out)
        return outputs

    def stats(self) -> EngineStats:
        """A snapshot: later steps do not change it."""
        bm, t = self.block_manager, self.totals
        return EngineStats(len(self.scheduler.running), len(self.scheduler.waiting), bm.usage,
                           self.scheduler.num_preemptions, bm.prefix_queries, bm.prefix_hits,
                           t.num_prompt_tokens, t.num_generation_tokens, t.num_seqs_added,
                           t.num_steps, bm.num_blocks, tuple(self.iteration_tokens),
                           t.iteration_tokens_sum)

    def check_health(self) -> None:
        """Raise if the executor cannot run steps any more (e.g. a tensor-parallel worker died)."""
        self.executor.check_health()

    def shutdown(self) -> None:
        """Stop the executor (and its workers) and the grammar compiler. Once is enough: a
        second call, such as LLM.__del__ at exit after the user's own, does nothing."""
        if self._stopped:
            return
        self._stopped = True
        self.structured_outputs.shutdown()
        self.executor.shutdown()
