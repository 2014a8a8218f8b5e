"""EngineConfig is settled when constructed (model found, config.json read, max_model_len
fixed), refuses bad values naming the field, and crosses to other processes as it is."""
import json
import os
import pickle

import pytest

from pagedserve.engine.config import EngineConfig


def test_construction_reads_the_model(stories_path):
    with open(os.path.join(stories_path, "config.json")) as f:
        hf = json.load(f)
    config = EngineConfig(model=stories_path)
    assert config.model_config.vocab_size == hf["vocab_size"]
    assert config.max_model_len == hf["max_position_embeddings"]
    assert pickle.loads(pickle.dumps(config)) == config


@pytest.mark.parametrize("kwargs,word", [
    ({"max_num_seqs": 0}, "max_num_seqs"), ({"block_size": 24}, "block_size"),
    ({"dtype": "int3"}, "dtype"), ({"device": "tpu"}, "device"),
    ({"tensor_parallel_size": 3}, "tensor_parallel_size"),
    ({"max_model_len": 10**6}, "max_model_len"), ({"model": "/no/such/dir"}, "/no/such/dir"),
])
def test_bad_values_name_their_field(stories_path, kwargs, word):
    with pytest.raises(ValueError, match=word):
        EngineConfig(**{"model": stories_path, **kwargs})


def test_cli_defaults_need_no_model():
    defaults = EngineConfig.defaults()
    assert defaults["block_size"] == 16 and "model" not in defaults
