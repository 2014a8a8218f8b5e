"""Start-up checks of `pagedserve serve`, done before any port is bound or process started.

vLLM's two stages: flags are checked as they are parsed (argparse types), then one engine
config is resolved (the model found, its config.json read, sizes checked against it). A
failure is one line naming the flag or path and what is allowed, and exit code 2 (argparse's
code for bad usage); `--log-level debug` adds the traceback.
"""
import logging
import re
import sys

from pagedserve.engine.config import EngineConfig

logger = logging.getLogger("pagedserve.server")
EXIT_BAD_ARGS = 2


def resolve_engine_config(model: str, engine_kwargs: dict, debug: bool) -> EngineConfig:
    """The settled EngineConfig, or exit with one line saying what is wrong."""
    try:
        config = EngineConfig(model=model, **engine_kwargs)
        _check_architecture(config)
        return config
    except (ValueError, OSError) as e:
        if debug:
            logger.exception("invalid engine arguments")
        sys.stderr.write(f"pagedserve serve: error: {as_flags(str(e))}\n")
        sys.exit(EXIT_BAD_ARGS)


def _check_architecture(config: EngineConfig) -> None:
    from pagedserve.engine.models import model_class
    model_class(config.model_config.architectures)
    if config.structured_outputs_config.reasoning_parser:
        _check_reasoning_tokens(config)


def _check_reasoning_tokens(config: EngineConfig) -> None:
    """--reasoning-parser needs its think tokens in the tokenizer (vLLM refuses to start)."""
    from pagedserve.engine.structured_output.reasoning import ReasoningEnd
    from pagedserve.engine.tokenizer import load_tokenizer
    tokenizer = load_tokenizer(config.tokenizer or config.model_path, config.trust_remote_code)
    ReasoningEnd.for_parser(config.structured_outputs_config.reasoning_parser, tokenizer)


def as_flags(message: str) -> str:
    """An engine error names fields (max_num_seqs); on the command line, say the flag."""
    for name in sorted(EngineConfig.field_names(), key=len, reverse=True):
        flag = "--" + name.replace("_", "-")
        if "_" in name:
            message = re.sub(rf"(?<![\w-]){name}(?!\w)", flag, message)
        elif message.startswith(name + " must "):  # "dtype must be ...", not "model path"
            message = flag + message[len(name):]
    return message
