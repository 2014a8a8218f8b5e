"""The lm-evaluation-harness as a real client: its `local-completions` model against
`pagedserve serve` on the bundled model, one log-likelihood and one generate_until task defined
on small local files. Per-example log-likelihoods must equal transformers' (1e-4), greedy
continuations LLM.generate's. (It reads prompt logprobs from echo + logprobs.)"""
import os
import shutil

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

TASKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lm_eval_tasks")


def _task_dir(tmp_path) -> str:
    """The task files, with their data files as absolute paths (datasets reads them from cwd)."""
    out = tmp_path / "tasks"
    out.mkdir()
    for name in os.listdir(TASKS):
        if name.endswith(".jsonl"):
            shutil.copy(os.path.join(TASKS, name), out / name)
    for name in os.listdir(TASKS):
        if name.endswith(".yaml"):
            text = open(os.path.join(TASKS, name)).read()
            jsonl = name.replace(".yaml", ".jsonl")
            (out / name).write_text(text.replace(f"test: {jsonl}", f"test: {out / jsonl}"))
    return str(out)


def _harness_model(server, stories_path):
    """lm-eval's local-completions model, tokenizing with the model's tokenizer (so it sends
    token ids) and sending the server's API key."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    return LocalCompletionsAPI(model="stories260K", base_url=f"{server.url}/v1/completions",
                               tokenizer=stories_path, tokenizer_backend="huggingface",
                               tokenized_requests=True, num_concurrent=1, max_retries=1,
                               header={"Authorization": f"Bearer {server.api_key}"})


def _evaluate(lm, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    return simple_evaluate(model=lm, tasks=["stories_loglikelihood", "stories_generate"],
                           task_manager=TaskManager(include_path=_task_dir(tmp_path)),
                           log_samples=True, batch_size=1)


def _hf_loglikelihood(model, context: list[int], continuation: list[int]) -> float:
    ids = context + continuation
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    return sum(lp[len(context) + i - 1, t].item() for i, t in enumerate(continuation))


@pytest.mark.slow
def test_lm_eval_harness_gives_true_numbers(server, stories_path, tmp_path):
    import transformers

    from pagedserve import LLM, SamplingParams
    encoder = _harness_model(server, stories_path)
    results = _evaluate(encoder, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(stories_path).eval()
    samples = results["samples"]["stories_loglikelihood"]
    assert len(samples) == 4
    for s in samples:
        doc = s["doc"]
        ctx, cont = encoder._encode_pair(doc["context"], doc["continuation"])
        got = s["resps"][0][0][0]
        assert got < 0 and got == pytest.approx(_hf_loglikelihood(hf, ctx, cont), abs=1e-4)
    llm = LLM(stories_path, num_kv_blocks=64)
    gens = results["samples"]["stories_generate"]
    assert len(gens) == 3
    for s in gens:
        ids = encoder.tok_encode(s["doc"]["context"])  # the ids the harness sent
        expected = llm.generate([{"prompt_token_ids": ids}], SamplingParams(
            temperature=0, max_tokens=24, stop=["\n", "."]), use_tqdm=False)[0].outputs[0].text
        assert s["resps"][0][0] == expected
        assert expected.strip()  # a real continuation, not an empty one
