import os
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

import keras_dctsparse
from keras_dctsparse import cpu_allocator


def _run(code, **environment):
    env = {key: value for key, value in os.environ.items()
           if key != cpu_allocator.ALLOCATOR_VARIABLE}
    env.update(environment, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_active_matches_tensorflow_memory_stats():
    try:
        tf.config.experimental.get_memory_info("CPU:0")
        expected = True
    except ValueError:
        expected = False
    assert cpu_allocator.bfc_cpu_allocator_active() is expected


def test_use_before_the_first_tensor_turns_bfc_on_in_a_fresh_process():
    # After the imports (which create no tensor), before the program's first tensor.
    assert _run("""
        import keras_dctsparse, tensorflow as tf
        from keras_dctsparse import cpu_allocator
        assert keras_dctsparse.use_bfc_cpu_allocator() is True
        x = tf.ones((256, 256))
        stats = tf.config.experimental.get_memory_info("CPU:0")
        print(cpu_allocator.bfc_cpu_allocator_active(), stats["peak"] > 0)
    """) == "True True"


def test_default_process_uses_malloc_and_the_environment_variable_turns_bfc_on():
    code = """
        import keras_dctsparse
        from keras_dctsparse import cpu_allocator
        print(cpu_allocator.bfc_cpu_allocator_active())
    """
    assert _run(code) == "False"
    assert _run(code, TF_CPU_ALLOCATOR_USE_BFC="true") == "True"


def test_late_call_raises_naming_the_variable_and_restores_it(monkeypatch):
    if cpu_allocator.bfc_cpu_allocator_active():
        pytest.skip("this test process already runs the BFC allocator")
    monkeypatch.setenv(cpu_allocator.ALLOCATOR_VARIABLE, "false")
    with pytest.raises(RuntimeError, match="TF_CPU_ALLOCATOR_USE_BFC=false.*before the"):
        keras_dctsparse.use_bfc_cpu_allocator()
    assert os.environ[cpu_allocator.ALLOCATOR_VARIABLE] == "false"
    monkeypatch.delenv(cpu_allocator.ALLOCATOR_VARIABLE)
    with pytest.raises(RuntimeError, match=r"\(unset\)"):
        keras_dctsparse.use_bfc_cpu_allocator()
    assert cpu_allocator.ALLOCATOR_VARIABLE not in os.environ


def test_command_line_turns_bfc_on_unless_the_environment_sets_it():
    code = """
        import sys
        sys.argv = ["dctsparse"]
        from keras_dctsparse.experiments import cli
        cli._import_tensorflow()
        from keras_dctsparse import cpu_allocator
        print(cpu_allocator.bfc_cpu_allocator_active())
    """
    assert _run(code) == "True"
    assert _run(code, TF_CPU_ALLOCATOR_USE_BFC="false") == "False"
