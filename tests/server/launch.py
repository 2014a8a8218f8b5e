"""`pagedserve serve ARGS...` with test-only hooks, set through environment variables:

PAGEDSERVE_TEST_STEP_DELAY  seconds to sleep in every engine step (keeps requests in flight)
PAGEDSERVE_TEST_FAIL_FILE   once this file exists, the engine step raises (the loop dies)
PAGEDSERVE_TEST_PAUSE_FILE  while this file exists, engine steps wait (HTTP is still served)
PAGEDSERVE_TEST_LOAD_GATE   loading the engine waits until this file exists
"""
import os
import sys
import time

from pagedserve.cli import main
from pagedserve.engine.async_engine import AsyncLLMEngine
from pagedserve.engine.llm_engine import LLMEngine

delay = float(os.environ.get("PAGEDSERVE_TEST_STEP_DELAY", "0"))
fail_file = os.environ.get("PAGEDSERVE_TEST_FAIL_FILE")
pause_file = os.environ.get("PAGEDSERVE_TEST_PAUSE_FILE")
load_gate = os.environ.get("PAGEDSERVE_TEST_LOAD_GATE")
real_step, real_from_config = LLMEngine.step, AsyncLLMEngine.from_config.__func__


def step(self):
    while pause_file and os.path.exists(pause_file):
        time.sleep(0.01)
    if fail_file and os.path.exists(fail_file):
        raise RuntimeError("injected engine failure")
    if delay:
        time.sleep(delay)
    return real_step(self)


def from_config(cls, config, *args, **kwargs):
    while load_gate and not os.path.exists(load_gate):
        time.sleep(0.05)
    return real_from_config(cls, config, *args, **kwargs)


LLMEngine.step = step
AsyncLLMEngine.from_config = classmethod(from_config)
if __name__ == "__main__":  # the engine core and TP workers re-import this module (spawn)
    sys.exit(main(["serve", *sys.argv[1:]]))
