"""Bad input and bad luck: one clear line, a non-zero exit, no traceback, nothing lost or half-written."""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from membench import datasets, downloads
from membench.checkpoints import weights_digest
from membench.cli import main
from membench.errors import EXIT_INTERRUPTED, DatasetMissing, MembenchError, TrainingDiverged
from membench.session import default_interrupt
from membench.store import ResultsStore
from membench.tasks import BinaryTask
from membench.training import meta_train
from tests.conftest import REPO_ROOT, records_in, the_error_line
from tests.test_datasets import write_fixture_data
from tests.test_training import TINY_MODEL

SLOW_LEARNED = TINY_MODEL + textwrap.dedent('''

    class SlowLearned(TinyLearned):
        """TinyLearned with 0.2 s steps, 40 of them, on N in {16, 32}: one checkpoint for both N, slow
        enough to be interrupted or waited for."""

        @classmethod
        def presets(cls, spec, options):
            return {"quick": Preset(TinyConfig(), TrainConfig(steps=40, batch_size=2, lr=1e-2, log_every=1,
                                                              checkpoint_every=1000, num_patterns=(16, 32)))}

        def meta_loss(self, patterns, queries):
            import os, signal, time
            global UPDATES
            UPDATES += 1
            if UPDATES == 3:  # the user presses Ctrl-C (or a scheduler sends SIGTERM) this many times in update 3
                for _ in range(int(os.environ.get("MEMBENCH_TEST_CTRL_C", 0))):
                    os.kill(os.getpid(), getattr(signal, os.environ.get("MEMBENCH_TEST_SIGNAL", "SIGINT")))
            hold = os.environ.get("MEMBENCH_TEST_HOLD")
            if hold:  # count the update; told to wait, say so in update 1, then train on once the test lets it
                with open(os.path.join(hold, "updates"), "a") as updates:
                    updates.write(f"{os.getpid()}\\n")
                if UPDATES == 1 and os.environ.get("MEMBENCH_TEST_WAIT"):
                    print("update 1 in training", flush=True)
                    while not os.path.exists(os.path.join(hold, "go")):
                        time.sleep(0.05)
            time.sleep(0.2)
            return super().meta_loss(patterns, queries)


    UPDATES = 0
''')


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _one_clear_line(result, *fragments: str, exit_code: int | None = None) -> None:
    assert result.exit_code != 0 if exit_code is None else result.exit_code == exit_code, result.output
    the_error_line(result)
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)


@pytest.mark.parametrize("args, fragment", [
    (["--num-patterns", "0"], "0 is out of range"),
    (["--num-patterns", "-5"], "-5 is out of range"),
    (["--seeds", "99999999999999999999"], "out of range: values must be between 0 and 2147483647"),
    (["--num-patterns", "99999999999999999999"], "out of range: values must be between 1 and 2147483647"),
    (["--seeds", ""], "give at least one value"),
    (["--num-patterns", "16 32"], "expected comma-separated integers such as 16,32; got '16 32'"),  # not N = 1632
    (["--seeds", ","], "give at least one value"),
    (["--train-time-limit", "nan"], "'nan' is not a finite number of seconds"),
    (["--train-time-limit", "inf"], "'inf' is not a finite number of seconds"),
])
def test_bad_numbers_are_refused_before_any_work(tmp_path, args, fragment):
    result = _invoke("run", *args, "--out", str(tmp_path), "--no-progress")
    _one_clear_line(result, fragment, exit_code=2)
    assert not (tmp_path / "runs").exists()



@pytest.mark.parametrize("option, fragment", [
    ("train.log_every=0", "train.log_every=0 must be a positive integer"),
    ("train.num_patterns=[16,0]", "train.num_patterns=(16, 0) must be null or a list of positive integers"),
    ("train.lr=fast", "option train.lr='fast' is not of type float"),
    ("read_steps=0", "read_steps=0 must be at least 1"),
    ("hidden=12.5", "option hidden=12.5 is not of type int (its default: 128); give a whole number"),
    ("grad_norm_term=1", "option grad_norm_term=1 is not of type bool (its default: True); give true or false"),
    ("write_lr_init=0.0", "write_lr_init=0.0 must be a finite number > 0 (a softplus rate)"),
    ("decay_init=1.0", "decay_init=1.0 must lie strictly between 0 and 1 (a sigmoid)"),
    ("train.weight_decay=-5", "train.weight_decay=-5.0 must be a non-negative finite number"),
    ("train.lr=Infinity", "train.lr=inf must be a positive finite float32 number"),
    ("train.lr=nan", "train.lr=nan must be a positive finite float32 number"),
    ("train.lr=1e300", "train.lr=1e+300 must be a positive finite float32 number (from 1.175e-38 to 3.403e+37)"),
    ("train.lr=2e38", "train.lr=2e+38 must be a positive finite float32 number"),  # AdamW's first step: 2e39
    ("train.clip_norm=1e300", "train.clip_norm=1e+300 must be a positive finite float32 number (from 1.175e-38 to "
                              "3.403e+38)"),
    ("train.clip_norm=1e-50", "train.clip_norm=1e-50 must be a positive finite float32 number"),
    ("write_lr_init=-inf", "write_lr_init=-inf must be a finite number > 0"),
    ("hidden=99999999999999999999", "cannot build model 'ebmm' with options {'hidden': 99999999999999999999}: "
                                    "empty(): argument 'size'"),  # torch's message, without its C++ stack
])
def test_bad_option_values_are_refused_before_any_work(tmp_path, option, fragment):
    result = _invoke("run", "--suite", "table1-learned", "--model", "ebmm", "--num-patterns", "16", "--option", option,
                     "--out", str(tmp_path), "--no-progress")
    _one_clear_line(result, fragment, exit_code=1)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_options_are_checked_against_the_declared_field_type():
    """A field declared `float | None` takes null and a float whatever the preset sets (EBMM quick's
    grad_norm_lr_init is 0.01, write_norm_power None), and refuses a string; an int field refuses null."""
    from membench.interface import resolve_preset
    from membench.registry import resolve_model
    from membench.tasks import BinaryTask

    ebmm, spec = resolve_model("ebmm"), BinaryTask(16).spec
    assert resolve_preset(ebmm, spec, "quick", {"grad_norm_lr_init": None}).model.grad_norm_lr_init is None
    assert resolve_preset(ebmm, spec, "quick", {"write_norm_power": 2.0}).model.write_norm_power == 2.0
    for option, fragment in ((("write_norm_power", "a"), "write_norm_power='a' is not of type float"),
                             (("hidden", None), "hidden=None is not of type int")):
        with pytest.raises(MembenchError, match=fragment):
            resolve_preset(ebmm, spec, "quick", dict([option]))


def test_constructor_options_are_checked_against_an_optional_annotation():
    """A model that is not trained declaring `radius: int | None = None` (sparse distributed memory) takes
    null and an int, and refuses a float or a string, though its default (None) names no type."""
    from membench.options import check_constructor_options
    from membench.registry import resolve_model

    sdm = resolve_model("sparse_distributed_memory")
    for value in (None, 40):
        check_constructor_options(sdm, "sparse_distributed_memory", {"radius": value})
    for value in (40.5, "wide"):
        with pytest.raises(MembenchError, match=f"option radius={value!r} is not of type int"):
            check_constructor_options(sdm, "sparse_distributed_memory", {"radius": value})


def test_duplicate_seeds_and_sizes_run_once(tmp_path):
    result = _invoke("run", "--model", "raw_slots", "--seeds", "0,0,1", "--num-patterns", "16,16",
                     "--queries", "16", "--out", str(tmp_path), "--no-progress")
    assert result.exit_code == 0 and "2 run(s) executed, 0 already finished" in result.output, result.output


_EXITS_IN_WRITE = textwrap.dedent('''
    import signal, sys
    from membench import AssociativeMemory
    class Model(AssociativeMemory):
        def __init__(self, spec):
            super().__init__()
        def memory_floats(self, spec):
            return 16
        def write(self, patterns):
            sys.exit({code})
        def read(self, state, queries):
            return queries
''')  # a model whose write calls sys.exit (its line 10)


def _user_module(tmp_path: Path, monkeypatch, source: str) -> None:
    """`source` as user_model.py in the working directory, importable afresh."""
    (tmp_path / "user_model.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("user_model", None)


@pytest.mark.parametrize("model, fragment", [
    ("user_model", "unknown model 'user_model' (module 'user_model' is found: give its class as "
                   "'user_model:ClassName')"),
    ("user_model.Model", "(for class Model of module user_model, give 'user_model:Model')"),
    ("user_model:model", "module 'user_model' has no class 'model'; did you mean 'user_model:Model'?"),
    ("user_model:Other", "module 'user_model' has no class 'Other' (its AssociativeMemory classes: Model)"),
    ("__main__", "unknown model '__main__'"),  # (run as a script, no spec to find: one line, no traceback)
])
def test_a_model_of_yours_named_without_its_class_is_told_how_to_name_it(tmp_path, monkeypatch, model, fragment):
    _user_module(tmp_path, monkeypatch, "from membench import AssociativeMemory\nclass Model(AssociativeMemory):\n"
                                        "    pass\n")
    _one_clear_line(_invoke("run", "--model", model, "--num-patterns", "16", "--out", "out", "--no-progress"),
                    fragment, exit_code=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("source, fragments", [
    ("def broken(:\n", ["cannot import module 'user_model'", "line 1", "fix the syntax error"]),
    ("raise ValueError('no config')\n", ["importing module 'user_model' raised ValueError: no config"]),
    ("import membench_test_absent_package\n", ["module 'user_model' for model 'user_model:Model' was found, but an "
                                              "import inside it failed", "install the package that provides "
                                              "'membench_test_absent_package'"]),
    ("from membench import NoSuchName\n", ["module 'user_model' for model 'user_model:Model' was found, but an "
                                          "import inside it failed", "fix the import in the module"]),
    (textwrap.dedent('''
        from membench import AssociativeMemory
        class Model(AssociativeMemory):
            def __init__(self, spec):
                super().__init__()
            def memory_floats(self, spec):
                return "8256"
            def write(self, patterns):
                return None
            def read(self, state, queries):
                return queries
     '''), ["memory_floats returned '8256' (str)", "non-negative integer"]),
    ("import sys\nsys.exit(0)\n", ["sys.exit(0) was called in <module>", "user_model.py, line 2",
                                    "raise an exception there instead"]),
    (_EXITS_IN_WRITE.format(code=0), ["sys.exit(0) was called in write", "user_model.py, line 10"]),
    (textwrap.dedent('''
        from membench import AssociativeMemory
        class Model(AssociativeMemory):
            def __init__(self, spec):
                super().__init__()
            def memory_floats(self, spec):
                return spec.num_patterns * spec.pattern_size
            def write(self, patterns):
                return patterns
            def read(self, queries):
                return queries
     '''), ["model 'user_model:Model': its read(self, queries) (", "user_model.py, line 10) does not take the "
            "arguments membench passes (TypeError: Model.read() takes 2 positional arguments but 3 were given); "
            "membench calls it as read(self, state: 'MemoryState', queries: 'torch.Tensor')"]),
])
def test_broken_user_models_get_one_line(tmp_path, monkeypatch, source, fragments):
    _user_module(tmp_path, monkeypatch, source)
    _one_clear_line(_invoke("run", "--model", "user_model:Model", "--num-patterns", "16", "--out", "out",
                            "--no-progress"), *fragments, exit_code=1)


def test_a_module_without_a_spec_is_no_model_and_no_traceback(monkeypatch):
    """`--model __main__` run as a script: find_spec raises ValueError for a module whose spec is None."""
    from membench.registry import resolve_model

    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None)
    with pytest.raises(MembenchError, match=r"^unknown model '__main__'\. Valid models"):
        resolve_model("__main__")


def test_a_sigterm_handler_exiting_inside_a_command_is_an_interrupt(tmp_path, monkeypatch):
    """Ray's SIGTERM handler, in place while ray.init runs, calls sys.exit(15): the command stops as interrupted
    (status 130), not as a model's sys.exit."""
    _user_module(tmp_path, monkeypatch, _EXITS_IN_WRITE.format(code="signal.SIGTERM"))
    _one_clear_line(_invoke("run", "--model", "user_model:Model", "--num-patterns", "16", "--out", "out",
                            "--no-progress"), "interrupted; finished runs are kept", exit_code=130)


_OWN = textwrap.dedent('''
    import torch
    from membench import AssociativeMemory


    class Soft(AssociativeMemory):
        def __init__(self, spec, beta: float = 4.0):
            super().__init__()
            self.spec, self.beta = spec, beta

        def memory_floats(self, spec):
            return spec.num_patterns * spec.pattern_size

        def write(self, patterns):
            return patterns.clone()

        def read(self, state, queries):
            weights = (-self.beta * torch.cdist(queries, state)).softmax(-1)
            return weights @ state


    class NoSuper(Soft):
        def __init__(self, spec):
            self.spec = spec


    class BoolRead(Soft):
        def read(self, state, queries):
            return super().read(state, queries) > 0.5


    class Flattened(Soft):
        def write(self, patterns):
            return patterns.flatten(0, 1).clone()


    class SharedPair(Soft):  # a table shared by every episode, declared whole, whose first size is the probe's B
        def memory_floats(self, spec):
            return spec.num_patterns * spec.pattern_size + 2 * 8

        def write(self, patterns):
            return {"patterns": patterns.clone(), "table": torch.zeros(2, 8)}

        def read(self, state, queries):
            return super().read(state["patterns"], queries)


    class HalfView(Soft):
        def memory_floats(self, spec):
            return spec.num_patterns * spec.pattern_size // 2

        def write(self, patterns):
            return patterns[..., : self.spec.pattern_size // 2]

        def read(self, state, queries):
            return queries.clamp(0, 1)


    class Raises(Soft):
        def read(self, state, queries):
            return state @ queries  # (B, N, D) @ (B, N, D): the shapes do not fit


    class RaisesWhenBuilt(Soft):
        def __init__(self, spec, beta: float = 4.0):
            super().__init__(spec, beta)
            self.scale = 1 / (beta - 4.0)


    class CannotCount(Soft):
        def memory_floats(self, spec):
            return self.slots * spec.pattern_size


    class TensorConfig(Soft):
        def config(self):
            return {"beta": torch.tensor(self.beta)}


    class NumpyConfig(Soft):
        def config(self):
            import numpy
            return {"beta": numpy.float32(self.beta), "slots": [numpy.int64(16)]}


    class NoCount(AssociativeMemory):  # memory_floats forgotten
        def __init__(self, spec):
            super().__init__()

        def write(self, patterns):
            return patterns.clone()

        def read(self, state, queries):
            return queries.clamp(0, 1)


    class Bare(AssociativeMemory):  # nothing implemented
        pass


    class NeedsBudget(Soft):  # sized by the budget, but from_spec not overridden to pass it
        def __init__(self, spec, budget):
            super().__init__(spec)


    class PlusMinus(Soft):  # reads in ±1 coding
        def read(self, state, queries):
            return 2 * super().read(state, queries) - 1
''')

_OWN_LEARNED = TINY_MODEL + textwrap.dedent('''

    class LossOnly(TinyLearned):
        def meta_loss(self, patterns, queries):
            return super().meta_loss(patterns, queries)[0]


    class LossPerBit(TinyLearned):
        def meta_loss(self, patterns, queries):
            loss, retrievals = super().meta_loss(patterns, queries)
            return (retrievals - patterns) ** 2, retrievals


    class NoPreset(TinyLearned):
        @classmethod
        def presets(cls, spec, options):
            return {"quick": super().presets(spec, options)["quick"].train}


    class PresetsRaise(TinyLearned):
        @classmethod
        def presets(cls, spec, options):
            return {"fast": super().presets(spec, options)["quick"]}["quick"]


    class ConfigNone(TinyLearned):
        @classmethod
        def presets(cls, spec, options):
            return {"quick": Preset(None, super().presets(spec, options)["quick"].train)}


    class ForgotTrainable(TinyLearned):
        trainable = False  # built through from_spec(spec, budget): its __init__ wants a config


    class SizedByBudget(TinyLearned):
        """A budget-sized model (its own from_spec), the base of a learned one."""

        trainable = False

        def __init__(self, spec):
            super().__init__(spec, TinyConfig())

        @classmethod
        def from_spec(cls, spec, budget, preset="quick", **options):
            return cls(spec, **options)


    class LearnedSoft(SizedByBudget):
        """Learned: built through from_preset, whatever from_spec it inherits."""

        trainable = True

        def __init__(self, spec, config):
            TinyLearned.__init__(self, spec, config)

        @classmethod
        def presets(cls, spec, options):
            return TinyLearned.presets(spec, options)


    class NotRegistered(TinyLearned):
        def __init__(self, spec, config):
            super().__init__(spec, config)
            del self.bias
            self.bias = torch.zeros(spec.pattern_size, requires_grad=True)  # not an nn.Parameter


    class TensorConfig(TinyLearned):
        def config(self):
            return {"bias": self.bias}


    class PresetConfig(TinyLearned):
        def config(self):  # the resolved preset is the model's when config() is read
            return {"sharpness": self.preset.model.sharpness}


    class NaNAfterOneStep(TinyLearned):
        @classmethod
        def presets(cls, spec, options):
            quick = super().presets(spec, options)["quick"]
            return {"quick": Preset(quick.model, TrainConfig(steps=20, batch_size=2, lr=1e-2, log_every=10))}

        def meta_loss(self, patterns, queries):
            logits = self._logits(self.write(patterns), queries)
            if torch.isnan(self.bias).any():  # what a model checking its inputs does with NaN weights
                raise ValueError("all elements of input should be between 0 and 1")
            return (logits * float("nan")).mean(), torch.sigmoid(logits).detach()
''')


@pytest.mark.parametrize("model, options, fragments", [
    ("Soft", ["--option", "beta=abc"], ["option beta='abc' is not of type float (its default: 4.0); give a number"]),
    ("NoSuper", [], ["its __init__ does not call super().__init__()"]),
    ("BoolRead", [], ["read returned a Tensor of shape (", "dtype torch.bool", "a plain, dense floating torch.Tensor"]),
    ("Flattened", [], ["differs from what the model declares", "state has shape (32, 128), not B = 2 episodes "
                                                                 "first, so it counts whole for each episode"]),
    ("SharedPair", [], ["differs from what the model declares", "(declared 2064, measured 2056, budget",
                        "a leaf shared by all episodes whose first size happens to be B counts so too",
                        "leaf.expand(B, *leaf.shape).clone()"]),
    ("HalfView", [], ["differs from what the model declares", "state is a view of a larger storage, 4096 values",
                      "e.g. .clone()"]),
    ("Raises", [], ["model 'own:Raises' raised RuntimeError: ", "(in read, ", "own.py, line "]),
    ("Soft", ["--option", "bta=2"], ["unexpected keyword argument 'bta'", "Its options: beta"]),
    ("NoSuper", ["--option", "beta=2"], ["unexpected keyword argument 'beta'", "It takes no options: drop --option"]),
    ("RaisesWhenBuilt", [], ["model 'own:RaisesWhenBuilt' raised ZeroDivisionError: ", "(in __init__, ",
                             "own.py, line ", "no run was started"]),
    ("CannotCount", [], ["raised AttributeError: 'CannotCount' object has no attribute 'slots' (in memory_floats, ",
                         "no run was started"]),
    ("TensorConfig", [], ["model 'own:TensorConfig': config()['beta'] is a Tensor, which a record cannot store",
                          "x.item()"]),
    ("NoCount", [], ["model 'own:NoCount' does not implement memory_floats(): every model implements"]),
    ("Bare", [], ["model 'own:Bare' does not implement memory_floats(), read(), write(): every model implements"]),
    ("NeedsBudget", [], ["cannot build model 'own:NeedsBudget': NeedsBudget.__init__() missing 1 required positional "
                         "argument: 'budget'", "by default NeedsBudget(spec, **options)", "overrides from_spec"]),
])
def test_a_model_that_breaks_the_contract_is_told_how_in_one_line(tmp_path, monkeypatch, model, options, fragments):
    (tmp_path / "own.py").write_text(_OWN)
    monkeypatch.chdir(tmp_path)
    _one_clear_line(_invoke("run", "--model", f"own:{model}", *options, "--num-patterns", "16", "--queries", "32",
                            "--out", "out", "--no-progress"), *fragments, exit_code=1)
    assert not (tmp_path / "out" / "runs").exists() or not list((tmp_path / "out" / "runs").iterdir())


def test_listing_a_required_constructor_argument_says_the_run_needs_it(tmp_path, monkeypatch):
    """NeedsBudget's __init__ requires `budget` and no from_spec of its own gives it: `list` says to give it as an
    option, not that from_spec sets it."""
    (tmp_path / "own.py").write_text(_OWN)
    monkeypatch.chdir(tmp_path)
    listed = _invoke("list", "--model", "own:NeedsBudget")
    assert listed.exit_code == 0 and "(none: required, give --option NAME=VALUE)" in listed.output, listed.output
    assert "from_spec sets it" not in listed.output


def test_a_binary_read_outside_zero_one_is_warned_about_once(tmp_path, monkeypatch):
    """±1 coding is scored as 0/1 (a -1 counts as 0), so the run goes on, with one warning saying so."""
    (tmp_path / "own.py").write_text(_OWN)
    monkeypatch.chdir(tmp_path)
    result = _invoke("run", "--model", "own:PlusMinus", "--num-patterns", "16", "--queries", "2000", "--out", "out",
                     "--no-progress")
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if "outside [0, 1]" in line]
    assert len(warned) == 1 and "read values from -1 to 1" in warned[0] and "not ±1" in warned[0], warned


@pytest.mark.parametrize("suite", ["table1", "capacity-budget"])
def test_a_model_raising_while_built_is_one_line_in_every_suite(tmp_path, monkeypatch, suite):
    """Suites that size runs by the models' declared counts build them before any run (capacity-budget): the
    error raised in the model's code is the same one line there."""
    (tmp_path / "own.py").write_text(_OWN)
    monkeypatch.chdir(tmp_path)
    _one_clear_line(_invoke("run", "--suite", suite, "--model", "own:RaisesWhenBuilt", "--queries", "32", "--out",
                            "out", "--no-progress"), "raised ZeroDivisionError: ", "(in __init__, ", "no run was started",
                    exit_code=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model, fragments", [
    ("LossOnly", ["LossOnly.meta_loss returned a tensor of shape ()", "it must return (the batch's loss"]),
    ("LossPerBit", ["LossPerBit.meta_loss returned (a tensor of shape (2, 16, 128), a tensor of shape (2, 16, 128))"]),
    ("NoPreset", ["presets() maps 'quick' to a TrainConfig", "Preset(<a frozen config dataclass>, TrainConfig(...))"]),
    ("ConfigNone", ["presets() maps 'quick' to a Preset whose model config is a NoneType, not a dataclass instance"]),
    ("PresetsRaise", ["model 'own_learned:PresetsRaise' raised KeyError: 'quick' (in presets, ", "no run was started"]),
    ("NaNAfterOneStep", ["diverged at step 1: the loss or the gradient norm was not finite"]),
    ("NotRegistered", ["model 'own_learned:NotRegistered' is meta-learned (trainable = True) but has no parameters to "
                       "train", "torch.nn.Parameter"]),
    ("ForgotTrainable", ["cannot build model 'own_learned:ForgotTrainable': ", "missing 1 required positional",
                         "ForgotTrainable defines presets or meta_loss but trainable is False: a meta-learned model "
                         "sets trainable = True"]),
    ("TensorConfig", ["model 'own_learned:TensorConfig': config()['bias'] is a Parameter, which a record cannot "
                      "store"]),
])
def test_a_learned_model_that_breaks_the_contract_is_told_how_in_one_line(tmp_path, monkeypatch, model, fragments):
    (tmp_path / "own_learned.py").write_text(_OWN_LEARNED)
    monkeypatch.chdir(tmp_path)
    _one_clear_line(_invoke("run", "--model", f"own_learned:{model}", "--num-patterns", "16", "--queries", "32",
                            "--out", "out", "--checkpoint-dir", "ck", "--no-progress"), *fragments, exit_code=1)
    assert records_in(tmp_path / "out") == []  # no run's record, whatever broke
    if model in ("NotRegistered", "TensorConfig"):  # refused when built: nothing trained, nothing written
        assert not list((tmp_path / "ck").rglob("*.pt")) if (tmp_path / "ck").exists() else True
        assert not (tmp_path / "out").exists()


def test_a_learned_model_config_may_read_its_resolved_preset(tmp_path, monkeypatch):
    (tmp_path / "own_learned.py").write_text(_OWN_LEARNED)
    monkeypatch.chdir(tmp_path)
    result = _invoke("run", "--model", "own_learned:PresetConfig", "--num-patterns", "16", "--queries", "32", "--out",
                     "out", "--checkpoint-dir", "ck", "--no-progress")
    assert result.exit_code == 0, result.output
    (record,) = records_in(tmp_path / "out")
    assert record["model_config"] == {"sharpness": record["preset_config"]["model"]["sharpness"]}


def test_numpy_numbers_in_a_model_config_are_stored_as_plain_ones(tmp_path, monkeypatch):
    """A config sized with NumPy arithmetic (budget // np.prod(...)) is stored as a record's plain numbers, not
    a crash after the run."""
    (tmp_path / "own.py").write_text(_OWN)
    monkeypatch.chdir(tmp_path)
    result = _invoke("run", "--model", "own:NumpyConfig", "--num-patterns", "16", "--queries", "32", "--out", "out",
                     "--no-progress")
    assert result.exit_code == 0, result.output
    (record,) = ResultsStore(tmp_path / "out").records()
    assert record["model_config"] == {"beta": 4.0, "slots": [16]}


def test_ctrl_c_before_the_first_record_leaves_no_output_folder(tmp_path, monkeypatch):
    """Interrupted while evaluating its first run, `run` exits 130 and removes the output folder it made (it held
    only that run's lock)."""
    monkeypatch.setenv("CRASH_AT_32", "1")  # tests.test_runner.Crashing: Ctrl-C while reading at N = 32
    result = _invoke("run", "--model", "tests.test_runner:Crashing", "--num-patterns", "32", "--queries", "96",
                     "--out", str(tmp_path / "new"), "--no-progress")
    assert result.exit_code == EXIT_INTERRUPTED and "rerun the same command" in result.output, result.output
    assert not (tmp_path / "new").exists()


def test_listing_the_options_of_a_model_whose_presets_raise_names_its_line(tmp_path, monkeypatch):
    (tmp_path / "own_learned.py").write_text(_OWN_LEARNED)
    monkeypatch.chdir(tmp_path)
    _one_clear_line(_invoke("list", "--model", "own_learned:PresetsRaise"), "raised KeyError: 'quick' (in presets, ",
                    "own_learned.py, line ", "its options cannot be listed", exit_code=1)


def test_a_learned_model_built_on_a_budget_sized_one_is_built_from_its_preset(tmp_path, monkeypatch):
    """The from_spec it inherits (a budget-sized base) is not the learned model's way in: from_preset is."""
    (tmp_path / "own_learned.py").write_text(_OWN_LEARNED)
    monkeypatch.chdir(tmp_path)
    result = _invoke("run", "--model", "own_learned:LearnedSoft", "--num-patterns", "16", "--queries", "32",
                     "--out", "out", "--checkpoint-dir", "ck", "--no-progress")
    assert result.exit_code == 0 and "1 run(s) executed" in result.output, result.output


def test_an_int_for_a_float_option_and_a_fraction_where_annotated_float_are_taken(tmp_path):
    """Universal Hopfield's `degree: float = 3`: its annotation, not its default's type, says what it takes."""
    result = _invoke("run", "--model", "universal_hopfield", "--option", "separation=polynomial", "--option",
                     "degree=2.5", "--num-patterns", "16", "--queries", "16", "--out", str(tmp_path), "--no-progress")
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(path.read_text()) for path in (tmp_path / "runs").glob("*.json")]
    assert record["options"] == {"separation": "polynomial", "degree": 2.5}
    assert record["model_config"]["degree"] == 2.5 and record["model_config"]["separation"] == "polynomial"


@pytest.mark.parametrize("args, fragment", [
    (["run", "--model", "raw_slots", "--address", "auto", "--no-progress"],
     "--address is for --launcher ray; add --launcher ray or drop --address"),
    (["report", "--reference", "no-such.csv"], "reference file no-such.csv does not exist; omit --reference"),
    (["figures", "--reference", "no-such.csv"], "reference file no-such.csv does not exist; omit --reference"),
    (["session", "--run", "--help", "--train-time-limit", "10", "--to", "s.tgz"],
     "--run '--help' asks for help; give the run command's own options"),
    (["set-aside", "--keep", "results/fig3", "--root", "."], "has no results/ folder: give --root the membench checkout"),
    (["throughput", "--model", "ebmm", "--model", "nope"], "unknown model 'nope'"),
    (["throughput", "--model", "ebmm", "--model", "hopfield_hebb"], "model(s) hopfield_hebb not meta-trained"),
])
def test_misused_commands_get_one_line_naming_the_fix(tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)  # a plain folder: not a git checkout, no results
    result = _invoke(*args, *(["--out", "out"] if args[0] in ("run", "report", "figures") else []))
    _one_clear_line(result, fragment, exit_code=1)
    assert "Usage:" not in result.output  # no help page either
    assert not (tmp_path / "out" / "runs").exists() and not (tmp_path / "s.tgz").exists()
    assert not (tmp_path / "results").exists()  # throughput: nothing timed, no table written


@pytest.mark.parametrize("args, fragment", [
    (["--budget", "99999999999999999999"], "ran out of memory at N=16 with budget 99999999999999999999"),
    (["--option", "seed=100000000000000000000000"], "failed with options {'seed': 100000000000000000000000}"),
])
def test_a_built_in_model_that_cannot_be_built_with_the_runs_sizes_is_refused_before_any_run(tmp_path, args, fragment):
    """The checks before any run build each model: an impossible size or option value gets the runs' own one line
    (naming the model's line), not a traceback."""
    result = _invoke("run", "--model", "sparse_distributed_memory", "--num-patterns", "16", *args,
                     "--out", str(tmp_path / "out"), "--no-progress")
    _one_clear_line(result, fragment, "baselines/sdm.py:", "no run was started", exit_code=1)
    assert not (tmp_path / "out").exists()


def test_a_file_path_for_a_model_is_told_to_name_the_module(tmp_path):
    _one_clear_line(_invoke("run", "--model", "./own.py:Soft", "--out", str(tmp_path), "--no-progress"),
                    "'./own.py:Soft' names a file; give a module name and class, e.g. 'own:Soft'", exit_code=1)


@pytest.mark.parametrize("model", [":", "own:", ":Soft", "own:Soft.inner"])
def test_a_model_path_without_a_module_or_a_class_name_says_the_form(tmp_path, model):
    _one_clear_line(_invoke("run", "--model", model, "--out", str(tmp_path / "out"), "--no-progress"),
                    f"'{model}' is not a module and a class; give them as 'module:Class'", exit_code=1)
    assert not (tmp_path / "out").exists()


def test_memory_networks_beyond_the_budget_and_small_raw_slots(tmp_path):
    """Refused when their runs start: the output folder, and the folders made to hold it, are gone again."""
    out = str(tmp_path / "a" / "b" / "out")
    _one_clear_line(_invoke("run", "--suite", "table1-learned", "--model", "memory_networks", "--num-patterns", "9000",
                            "--out", out, "--no-progress"), "no value per slot for N=9000", exit_code=1)
    _one_clear_line(_invoke("run", "--model", "raw_slots", "--budget", "100", "--num-patterns", "16",
                            "--out", out, "--no-progress"), "no whole pattern of 128 values", exit_code=1)
    assert not (tmp_path / "a").exists()


def test_a_record_with_no_per_query_errors_is_named_by_report(tmp_path):
    """A record complete in every other field but holding no errors cannot be summarised: report names it."""
    args = ["--model", "raw_slots", "--num-patterns", "16", "--queries", "16", "--out", str(tmp_path), "--no-progress"]
    assert _invoke("run", *args).exit_code == 0
    (path,) = (tmp_path / "runs").glob("*.json")
    path.write_text(json.dumps({**json.loads(path.read_text()), "errors": []}))
    _one_clear_line(_invoke("report", "--out", str(tmp_path)), f"{path} holds no per-query errors", exit_code=1)


@pytest.mark.parametrize("content", [b"", b'{"run_id": "x", "errors": [1', b"\x00garbage\xff", b'{"schema": 2}',
                                     "no training", b"[" * 100_000 + b"]" * 100_000])  # (deeper than the stack)
def test_corrupt_record_is_named_by_report_and_repaired_by_run(tmp_path, content):
    """Unreadable records, and one without its training field, are named by report and made again by run."""
    args = ["--model", "raw_slots", "--num-patterns", "16", "--queries", "16", "--out", str(tmp_path), "--no-progress"]
    assert _invoke("run", *args).exit_code == 0
    (path,) = (tmp_path / "runs").glob("*.json")
    good = json.loads(path.read_text())
    if content == "no training":
        content = json.dumps({name: value for name, value in good.items() if name != "training"}).encode()
    path.write_bytes(content)
    _one_clear_line(_invoke("report", "--out", str(tmp_path)), str(path), "rerun the `membench run` command that made it",
                    exit_code=1)
    rerun = _invoke("run", *args)
    assert rerun.exit_code == 0 and "1 run(s) executed" in rerun.output, rerun.output
    assert f"{path} is" in rerun.output and "computed again" in rerun.output
    assert json.loads(path.read_text())["errors"] == good["errors"]


def test_another_runs_record_under_this_runs_name_does_not_finish_this_run(tmp_path):
    """A record of N = 32 copied over N = 16's file: the N = 16 run is made again (before, it counted as done
    and its cell stayed blank) and its file holds its own record."""
    args = ["--model", "raw_slots", "--num-patterns", "16,32", "--queries", "32", "--out", str(tmp_path), "--no-progress"]
    assert _invoke("run", *args).exit_code == 0
    paths = {json.loads(path.read_text())["task"]["num_patterns"]: path for path in (tmp_path / "runs").glob("*.json")}
    good = json.loads(paths[16].read_text())
    paths[16].write_text(paths[32].read_text())
    rerun = _invoke("run", *args)
    assert rerun.exit_code == 0 and "1 run(s) executed" in rerun.output, rerun.output
    assert f"{paths[16]} is the record of run {paths[32].stem}, not of {paths[16].stem}" in rerun.output
    assert json.loads(paths[16].read_text())["errors"] == good["errors"]


def test_more_residual_blocks_than_the_image_size_halves_is_refused_by_name():
    from membench.encoders import CodecConfig
    with pytest.raises(MembenchError, match=r"6 residual blocks \(channels=\[8, 8, 8, 8, 8, 8\]\) halve 32x32 images 6 "
                                            r"times, which 32 allows only 5 times; give at most 5 channel widths"):
        CodecConfig.for_images((1, 32, 32), (8,) * 6)
    assert CodecConfig.for_images((1, 32, 32), (8,) * 5).grid == 1


@pytest.mark.parametrize("option", ["channels=[]", "channels=[0,-1,2]", "readout=-1", "embedding=0"])
def test_bad_image_energy_sizes_are_refused_by_name(option):
    from membench.interface import resolve_preset
    from membench.registry import resolve_model
    from membench.tasks import BinaryTask
    key, value = option.split("=")
    with pytest.raises(MembenchError, match=f"{key}=.* must be"):
        resolve_preset(resolve_model("ebmm"), BinaryTask(16).spec, "quick", {key: json.loads(value)})


@pytest.mark.parametrize("model, option, fragment", [
    ("hopfield_hebb", "max_sweeps=0", "hopfield_hebb: max_sweeps=0 must be a positive integer"),
    ("lstm", "hidden_size=0", "lstm: hidden_size=0 must be a positive number"),
    ("mann", "usage_decay=5", "mann: usage_decay=5.0 must lie in [0, 1]"),
    ("dnc", "read_heads=0", "dnc: read_heads=0 must be a positive number"),
    ("memory_networks", "init_scale=-1", "memory_networks: init_scale=-1.0 must be a positive number"),
    ("differentiable_plasticity", "present_steps=0", "present_steps=0 must be at least 2"),
    ("kanerva_machine", "noise_variance=-1", "kanerva_machine: noise_variance=-1.0 must be a positive number"),
    ("sparse_distributed_memory", "num_locations=0", "no counter vector of 128 values fits (num_locations=0)"),
    ("modern_hopfield", "num_slots=0", "modern_hopfield: no whole pattern of 128 values fits (num_slots=0)"),
    ("modern_hopfield", "num_slots=true", "modern_hopfield: num_slots=True must be a positive integer"),
    ("mann", "usage_decay=1.5", "mann: usage_decay=1.5 must lie in [0, 1]"),
])
def test_baseline_option_values_out_of_range_are_refused_before_any_work(tmp_path, model, option, fragment):
    result = _invoke("run", "--model", model, "--num-patterns", "16", "--queries", "16", "--option", option,
                     "--out", str(tmp_path), "--checkpoint-dir", str(tmp_path / "ck"), "--no-progress")
    _one_clear_line(result, fragment, exit_code=1)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_a_smaller_slot_count_is_an_option_of_the_stored_pattern_memories(tmp_path):
    """num_slots (SDM: num_locations) comes from the budget unless an option gives it."""
    result = _invoke("run", "--model", "modern_hopfield", "--num-patterns", "16", "--queries", "16", "--option",
                     "num_slots=8", "--out", str(tmp_path), "--no-progress")
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(path.read_text()) for path in (tmp_path / "runs").glob("*.json")]
    assert record["memory_floats"] == 8 * 128


def test_packed_errors_out_of_range_are_unreadable():
    """Packed float32 errors (long records) must be finite and non-negative too, as a list's are."""
    import base64
    import zlib

    import numpy as np

    from membench.records import unpack_errors
    for value in (-1.0, float("inf"), float("nan")):
        values = np.array([0.0, value, 2.0], dtype="<f4")
        packed = {"float32_zlib_base64": base64.b64encode(zlib.compress(values.tobytes())).decode(), "count": 3}
        with pytest.raises(ValueError, match="not a finite non-negative number"):
            unpack_errors(packed)


TRAINED = {"checkpoint_key": "k", "curve": "training/k.csv", "config": {}, "train_time_s": 1.0, "history": None}


@pytest.mark.parametrize("change", [{"task": "binary"}, {"environment": {"torch": "2.13.0"}}, {"errors": [0.0, "x"]},
                                    {"seed": "0"}, {"finished_at": None}, {"training": 1.5}, {"errors": [0.0] * 17},
                                    {"errors": [float("nan")] + [0.0] * 15}, {"errors": [-5.0] + [0.0] * 15},
                                    {"task": {"kind": "binary", "num_patterns": 0}},
                                    {"environment": {"device": "cpu", "device_name": "x", "git_commit": 123}},
                                    {"task": {"kind": "binary", "num_patterns": 16, "erased": 64}},
                                    {"task": {"kind": "omniglot", "num_patterns": 16, "image_size": 32}},
                                    {"task": {"kind": "binary", "num_patterns": 16, "dim": 128, "erased": 0,
                                              "flip": "abc"}},
                                    {"task": {"kind": "binary", "num_patterns": 16, "dim": 128, "erased": 0,
                                              "flip": float("nan")}},
                                    {"task": {"kind": "omniglot", "num_patterns": 16, "image_size": 32, "block": 16,
                                              "data": 5}},
                                    {"training": {**TRAINED, "train_time_s": "x"}},
                                    {"training": {**TRAINED, "history": ["x"]}},
                                    {"training": {**TRAINED, "history": [{}]}}, {"preset_config": "x"},
                                    {"preset_config": {"model": {}}}, {"train_split": {"batch_errors": "x"}}])
def test_a_record_with_a_wrong_field_is_named_by_report_and_repaired_by_run(tmp_path, change):
    """A record that parses but whose fields the reports read are of the wrong kind: one line naming the file
    and the field (no traceback), and `membench run` computes it again."""
    args = ["--model", "raw_slots", "--num-patterns", "16", "--queries", "16", "--out", str(tmp_path), "--no-progress"]
    assert _invoke("run", *args).exit_code == 0
    (path,) = (tmp_path / "runs").glob("*.json")
    good = json.loads(path.read_text())
    path.write_text(json.dumps({**good, **change}))
    _one_clear_line(_invoke("report", "--out", str(tmp_path)), str(path), next(iter(change)), exit_code=1)
    rerun = _invoke("run", *args)
    assert rerun.exit_code == 0 and "1 run(s) executed" in rerun.output, rerun.output
    assert json.loads(path.read_text())["errors"] == good["errors"]


def _tiny(tmp_path: Path, monkeypatch, source: str = TINY_MODEL) -> None:
    (tmp_path / "tiny_learned.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("tiny_learned", None)


class _RunsCode:
    """Pickles as a call of os.makedirs(path): what a checkpoint from an untrusted machine could hold."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.makedirs, (str(self.path),)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04truncated", "foreign", "code", ("step", "5"), ("step", -3),
                                     ("elapsed_s", "x"), ("curve", "x"), ("history", "x"), ("history", ["x"]),
                                     ("history", [{"device_name": 5, "device": "cpu", "steps": [0, 1],
                                                   "train_time_s": 1.0, "commit": None}]),
                                     ("generator", torch.zeros(5056)), ("generator", torch.zeros(10, dtype=torch.uint8)),
                                     ("model", {"bias": "x"}), ("model", [torch.zeros(128)]), ("config", "x"),
                                     ("optimizer", ["x"]), ("global_generators", "x"),
                                     ("global_generators", {"torch": torch.zeros(3), "numpy": [], "python": []}),
                                     ("global_generators", {"torch": torch.get_rng_state(), "python": [3, (1,), None],
                                                            "numpy": ["MT19937", torch.zeros(624), "x", 0, 0.0]}),
                                     "nan"])
def test_corrupt_checkpoint_is_set_aside_and_retrained(tmp_path, monkeypatch, content):
    """Unreadable, foreign or code-carrying checkpoints (read as data only: nothing runs), ones with a field
    of the wrong kind, and ones whose weights hold a NaN (not the model's read to blame), are set aside."""
    _tiny(tmp_path, monkeypatch)
    args = ["run", "--model", "tiny_learned:TinyLearned", "--num-patterns", "16", "--queries", "16",
            "--checkpoint-dir", "ck", "--no-progress"]
    assert _invoke(*args, "--out", "first").exit_code == 0
    (checkpoint,) = (tmp_path / "ck").glob("*.pt")
    trained = torch.load(checkpoint, weights_only=True)["model"]
    if content == "foreign":
        torch.save({"model": {"other.weight": torch.zeros(3)}, "optimizer": {},
                    "generator": torch.Generator().get_state(), "step": 6, "elapsed_s": 0.0, "curve": []}, checkpoint)
    elif content == "code":
        saved = torch.load(checkpoint, weights_only=True)
        torch.save({**saved, "curve": [_RunsCode(tmp_path / "ran")]}, checkpoint)
    elif isinstance(content, tuple):
        torch.save({**torch.load(checkpoint, weights_only=True), content[0]: content[1]}, checkpoint)
    elif content == "nan":
        saved = torch.load(checkpoint, weights_only=True)
        name = next(name for name, value in saved["model"].items() if value.is_floating_point())
        saved["model"][name] = torch.full_like(saved["model"][name], float("nan"))
        torch.save(saved, checkpoint)
    else:
        checkpoint.write_bytes(content)
    result = _invoke(*args, "--out", "second")
    assert result.exit_code == 0, result.output
    assert f"checkpoint {checkpoint.relative_to(tmp_path)} is unreadable or does not fit" in result.output
    assert (tmp_path / "ck" / (checkpoint.name + ".corrupt")).exists()
    if content == "foreign":  # the reason in full, not its first line ("Error(s) in loading state_dict for ...:")
        assert "Missing key(s) in state_dict" in result.output
    assert not (tmp_path / "ran").exists()
    retrained = torch.load(checkpoint, weights_only=True)["model"]
    assert all(torch.equal(trained[k], retrained[k]) for k in trained)  # same seed, same training


def test_a_model_of_yours_that_runs_out_of_memory_in_training_says_so_in_one_line(tmp_path, monkeypatch):
    """A training batch far past the address space (10^11 episodes: 1.6 PB): allocated in membench's own episode
    sampling, not in the model's file, it is still the run's sizes, named in one line with the fix."""
    _tiny(tmp_path, monkeypatch)
    result = _invoke("run", "--model", "tiny_learned:TinyLearned", "--num-patterns", "16", "--queries", "16",
                     "--checkpoint-dir", "ck", "--no-progress", "--out", "out", "--option", "train.batch_size=100000000000")
    _one_clear_line(result, "model 'tiny_learned:TinyLearned' ran out of memory at N=16", "train.batch_size too")
    assert not (tmp_path / "out" / "runs").exists() or not list((tmp_path / "out" / "runs").iterdir())


INF_BUFFER_MODEL = TINY_MODEL.replace(
    "        self.bias = torch.nn.Parameter(torch.zeros(spec.pattern_size))\n",
    "        self.bias = torch.nn.Parameter(torch.zeros(spec.pattern_size))\n"
    "        self.register_buffer('floor', torch.tensor(float('-inf')))  # by design: a running maximum's start\n")


def test_an_infinite_buffer_is_no_broken_checkpoint_and_a_nan_weight_is_refused_by_no_train(tmp_path, monkeypatch):
    assert "register_buffer" in INF_BUFFER_MODEL
    _tiny(tmp_path, monkeypatch, INF_BUFFER_MODEL)
    args = ["run", "--model", "tiny_learned:TinyLearned", "--num-patterns", "16", "--queries", "16",
            "--checkpoint-dir", "ck", "--no-progress"]
    assert _invoke(*args, "--out", "first").exit_code == 0
    again = _invoke(*args, "--out", "second")
    assert again.exit_code == 0 and "every checkpoint was trained already" in again.output, again.output
    (checkpoint,) = (tmp_path / "ck").glob("*.pt")
    saved = torch.load(checkpoint, weights_only=True)
    saved["model"]["bias"][0] = float("nan")
    torch.save(saved, checkpoint)
    _one_clear_line(_invoke(*args, "--out", "third", "--no-train"),
                    "is unreadable (ValueError: not a membench training checkpoint (its parameters bias hold NaN",
                    exit_code=1)
    assert checkpoint.exists()  # --no-train leaves it where it is


def test_truncated_data_files_name_the_file(tmp_path):
    root = write_fixture_data(tmp_path / "data")
    zip_path = root / "omniglot" / "images_background_small1.zip"
    zip_path.write_bytes(zip_path.read_bytes()[: zip_path.stat().st_size // 2])
    with pytest.raises(MembenchError, match=f"{zip_path} is corrupt or truncated.*membench download omniglot"):
        datasets.load_omniglot(root)
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(MembenchError, match=f"{batch} is corrupt or truncated"):
        datasets.load_cifar10(root)
    batch.write_bytes(pickle.dumps({"data": np.zeros((1, 2), np.uint8), "labels": [0]}))
    with pytest.raises(MembenchError, match=f"{batch} holds data of shape"):
        datasets.load_cifar10(root)
    for pixels in (np.full((1, 3072), np.nan), np.full((1, 3072), 300)):  # cast to bytes, they were silent
        batch.write_bytes(pickle.dumps({"data": pixels, "labels": [0]}))
        with pytest.raises(MembenchError, match=f"{batch} holds pixels of type {pixels.dtype}, expected uint8"):
            datasets.load_cifar10(root)


def test_a_cifar_batch_runs_no_code_and_stray_bytes_in_it_name_the_file(tmp_path):
    """A batch file is unpickled as containers and numpy arrays only: one that would call a function is
    refused before calling it; stray bytes that make pickle raise LookupError (an unknown codec) or name
    a function outside the allowed ones are a corrupt file, named, not a traceback."""
    root = write_fixture_data(tmp_path / "data")
    batch, marker = root / "cifar-10-batches-py" / "data_batch_2", tmp_path / "written-by-the-pickle"
    batch.write_bytes(b"c__builtin__\nopen\n(S'" + str(marker).encode() + b"'\nS'w'\ntR.")  # open(marker, 'w')
    with pytest.raises(MembenchError, match=f"{batch} is corrupt or truncated .*__builtin__.open is not part of"):
        datasets.load_cifar10(root)
    assert not marker.exists()
    valid = pickle.dumps({b"data": b"x" * 10, b"labels": [1, 2]}, protocol=2)
    for stray in (valid.replace(b"latin1", b"la!in1", 1), valid.replace(b"_codecs", b"_-odecs", 1)):
        batch.write_bytes(stray)
        with pytest.raises(MembenchError, match=f"{batch} is corrupt or truncated"):
            datasets.load_cifar10(root)


def test_an_omniglot_zip_member_in_an_unknown_compression_names_its_zip(tmp_path):
    """zipfile raises NotImplementedError on a compression method it does not know (here 99, AES)."""
    root = write_fixture_data(tmp_path / "data")
    zip_path = root / "omniglot" / "images_background_small1.zip"
    data = bytearray(zip_path.read_bytes())
    for signature, method_at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # local headers, central directory
        start = data.find(signature)
        while start != -1:
            data[start + method_at:start + method_at + 2] = (99).to_bytes(2, "little")
            start = data.find(signature, start + 4)
    zip_path.write_bytes(bytes(data))
    with pytest.raises(MembenchError, match=f"{zip_path} is corrupt or truncated.*membench download omniglot"):
        datasets.load_omniglot(root)


def _with_first_png_changed(tmp_path, change) -> tuple[Path, Path]:
    """Fixture data whose first Omniglot PNG `change(png: bytearray)` alters in place, the zip rewritten with
    right checksums; (data root, that zip)."""
    root = write_fixture_data(tmp_path / "data")
    zip_path = root / "omniglot" / "images_background_small1.zip"
    with zipfile.ZipFile(zip_path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    first = next(name for name in members if name.endswith(".png"))
    png = bytearray(members[first])
    change(png)
    members[first] = bytes(png)
    with zipfile.ZipFile(zip_path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return root, zip_path


def test_a_png_with_a_broken_chunk_names_its_zip(tmp_path):
    """A zip whose checksums are right but one of whose PNGs is damaged (PIL raises SyntaxError)."""

    def break_chunk(png: bytearray) -> None:
        png[36] ^= 0x55  # the image data chunk's length: PIL then reads a garbage chunk type (SyntaxError)

    root, zip_path = _with_first_png_changed(tmp_path, break_chunk)
    with pytest.raises(MembenchError, match=f"{zip_path} is corrupt or truncated"):
        datasets.load_omniglot(root)


def test_a_png_claiming_a_huge_image_names_its_zip(tmp_path):
    """A PNG whose header (checksum intact) claims 30000 x 30000 pixels: PIL's DecompressionBombError, named as a
    corrupt zip like any other damage, not a traceback."""

    def claim_huge(png: bytearray) -> None:
        png[16:24] = (30000).to_bytes(4, "big") * 2  # IHDR's width and height
        png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")  # and its checksum: only the size is odd

    root, zip_path = _with_first_png_changed(tmp_path, claim_huge)
    with pytest.raises(MembenchError, match=f"{zip_path} is corrupt or truncated.*DecompressionBombError"):
        datasets.load_omniglot(root)


def test_a_download_cut_short_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    """A server that closes the connection early (fewer bytes than its Content-Length) or sends a page that is
    not a zip: one clear error, and neither the file nor its .part stays (a later download would skip it)."""
    class Response(io.BytesIO):
        def __init__(self, body: bytes, length: int):
            super().__init__(body)
            self.headers = {"Content-Length": str(length)}

        def __enter__(self):
            return self

        def __exit__(self, *args):
            self.close()

    for body, length, fragment in ((b"PK" + bytes(100), 300, "102 of 300 bytes arrived"),
                                   (b"<html>busy</html>", 17, "not a zip archive")):
        monkeypatch.setattr(downloads.urllib.request, "urlopen", lambda *a, **k: Response(body, length))
        with pytest.raises(DatasetMissing, match=f"could not download .*images_background.zip.*{fragment}"):
            downloads.download("omniglot", tmp_path)
        assert not list(tmp_path.rglob("*.zip*"))


def test_a_download_that_fails_says_whether_the_files_already_there_load(tmp_path, monkeypatch, data_root):
    """Offline, beside a subset of the data (the fixture's, as the bundled ../shared/data): the failure says the
    files in place still serve the runs; with nothing in place it says only that the download failed."""
    def offline(*args, **kwargs):
        raise downloads.urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(downloads.urllib.request, "urlopen", offline)
    for name in ("cifar10", "omniglot"):
        with pytest.raises(DatasetMissing, match=f"could not download .*URLError.*the files already in {data_root} "
                                                 r"load as they are: .*\(train \d+, test \d+\)"):
            downloads.download(name, data_root)
    with pytest.raises(DatasetMissing, match="could not download") as caught:
        downloads.download("cifar10", tmp_path / "empty")
    assert "load as they are" not in str(caught.value) and not (tmp_path / "empty").exists()


def test_divergence_says_whether_a_checkpoint_exists(tmp_path):
    from tests.test_training import _linear_model
    from membench.interface import TrainConfig

    model = _linear_model()
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    config = TrainConfig(steps=3, batch_size=2, log_every=1)
    with pytest.raises(TrainingDiverged, match="diverged at step 1.*Fix: the model's initial weights give it: check its options .a NaN or inf "
                       "value.. and its initialisation; no checkpoint was written"):
        meta_train(model, BinaryTask(4), config, tmp_path / "c.pt", torch.device("cpu"), 0, progress=False)


def test_temporary_files_no_writer_holds_are_removed_once_a_minute_old(tmp_path):
    """An orphan is a temporary file no writer locks (`write_atomic` holds its own from making to renaming) and
    ORPHAN_AGE_S old, whatever host or process its name gives: a killed writer's on another container's host, one
    whose process id this process now has (a restarted container), an older membench's. A file a live writer
    holds stays however old, and so does a new one (its writer may be about to lock it)."""
    import fcntl

    from membench.store import ORPHAN_AGE_S, _HOST

    runs = tmp_path / "runs"
    runs.mkdir()
    other_host = runs / ".table1-x.json.deadhost-4.abc.tmp"
    old_style = runs / ".table1-y.json.k3j2.tmp"
    my_pid = runs / f".table1-z.json.{_HOST}-{os.getpid()}.abc.tmp"
    held = runs / f".table1-w.json.{_HOST}-{os.getpid()}.def.tmp"
    new = runs / ".table1-v.json.deadhost-5.abc.tmp"
    for path in (other_host, old_style, my_pid, held, new):
        path.write_text("{")
    old = time.time() - ORPHAN_AGE_S - 1
    for path in (other_host, old_style, my_pid, held):
        os.utime(path, (old, old))
    with open(held, "rb") as writer:
        fcntl.flock(writer.fileno(), fcntl.LOCK_EX)  # as write_atomic's writer holds it
        ResultsStore(tmp_path)
    assert not other_host.exists() and not old_style.exists() and not my_pid.exists()
    assert held.exists() and new.exists()


def test_a_writers_temporary_file_is_locked_until_renamed(tmp_path):
    """`write_atomic` holds its temporary file's lock while writing, so `remove_orphans` leaves it, however old."""
    from membench.store import ORPHAN_AGE_S, remove_orphans, write_atomic

    left = []

    def write(handle):
        temporary = next(tmp_path.glob(".*.tmp"))
        os.utime(temporary, (time.time() - ORPHAN_AGE_S - 1,) * 2)
        left.extend(remove_orphans(tmp_path))
        handle.write(b"done")

    write_atomic(tmp_path / "record.json", write)
    assert left == [] and (tmp_path / "record.json").read_bytes() == b"done" and not list(tmp_path.glob(".*.tmp"))


def _membench(tmp_path: Path, *args: str, **env_vars: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)]), "PYTHONUNBUFFERED": "1",
           **env_vars}
    return subprocess.Popen([sys.executable, "-m", "membench.cli", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=default_interrupt)  # as at a terminal: a test run in a shell's background
    #                                                          inherits SIGINT ignored


def _lines_until(process: subprocess.Popen, text: str) -> str:
    """What `process` has said up to and including its first line holding `text` (fails if it ends first)."""
    said = []
    for line in process.stdout:
        said.append(line)
        if text in line:
            return "".join(said)
    raise AssertionError(f"the process ended without saying {text!r}:\n{''.join(said)}")


def _blocked_on_a_lock(process: subprocess.Popen) -> None:
    """Return once `process` waits for a file lock another process holds (Linux's /proc/locks lists the
    waiter with a "->"); fails if it ends first, or is not seen waiting for minutes (a /proc/locks that does
    not list waiters, as in some sandboxes)."""
    for _ in range(2400):
        if any(line.split()[1:2] == ["->"] and line.split()[5] == str(process.pid)
               for line in Path("/proc/locks").read_text().splitlines()):
            return
        assert process.poll() is None, process.communicate()[0]
        time.sleep(0.05)
    raise AssertionError(f"process {process.pid} was not seen waiting for a lock in /proc/locks")


_SLOW_ARGS = ["run", "--model", "slow_learned:SlowLearned", "--num-patterns", "16", "--queries", "16",
              "--checkpoint-dir", "ck", "--out", "out", "--no-progress"]


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_ctrl_c_during_training_checkpoints_and_the_rerun_resumes(tmp_path, signal_name):
    """A first Ctrl-C (or SIGTERM: `kill`, a scheduler's stop) lets the update in flight finish, checkpoints it
    and exits; the rerun trains the rest."""
    (tmp_path / "slow_learned.py").write_text(SLOW_LEARNED)
    process = _membench(tmp_path, *_SLOW_ARGS, MEMBENCH_TEST_CTRL_C="1", MEMBENCH_TEST_SIGNAL=signal_name)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == EXIT_INTERRUPTED, output
    assert "Traceback" not in output and "checkpointed at step 3" in output and "rerun the same command" in output
    (checkpoint,) = (tmp_path / "ck").glob("*.pt")
    assert torch.load(checkpoint, weights_only=False)["step"] == 3
    rerun = _membench(tmp_path, *_SLOW_ARGS)
    output, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, output
    curve = torch.load(checkpoint, weights_only=False)["curve"]
    assert [row["step"] for row in curve] == list(range(1, 41))  # resumed, no step trained twice


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_second_ctrl_c_stops_at_once_and_leaves_nothing_half_written(tmp_path, signal_name):
    """A second Ctrl-C (or SIGTERM) interrupts the update in flight: no checkpoint (none was due), no record, no
    temporary file; the rerun trains from the start."""
    (tmp_path / "slow_learned.py").write_text(SLOW_LEARNED)
    process = _membench(tmp_path, *_SLOW_ARGS, MEMBENCH_TEST_CTRL_C="2", MEMBENCH_TEST_SIGNAL=signal_name)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == EXIT_INTERRUPTED, output
    assert "Traceback" not in output and "rerun the same command to continue" in output
    assert not list((tmp_path / "ck").glob("*.pt")) and not list(tmp_path.rglob("*.tmp"))
    assert not (tmp_path / "out" / "runs").exists() or not list((tmp_path / "out" / "runs").iterdir())
    rerun = _membench(tmp_path, *_SLOW_ARGS)
    output, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0 and "1 run(s) executed" in output, output
    (checkpoint,) = (tmp_path / "ck").glob("*.pt")
    assert [row["step"] for row in torch.load(checkpoint, weights_only=False)["curve"]] == list(range(1, 41))


@pytest.mark.slow
def test_two_processes_share_one_checkpoint_and_one_output_directory(tmp_path):
    """The second process starts while the first trains the checkpoint both need: it waits, then reuses the
    training, and each run is computed once, by one of the two."""
    if not Path("/proc/locks").exists():
        pytest.skip("needs Linux's /proc/locks to see the second process wait")
    (tmp_path / "slow_learned.py").write_text(SLOW_LEARNED)
    hold = tmp_path / "hold"
    hold.mkdir()
    args = [*_SLOW_ARGS[:4], "16,32", *_SLOW_ARGS[5:]]
    first = _membench(tmp_path, *args, MEMBENCH_TEST_HOLD=str(hold), MEMBENCH_TEST_WAIT="1")
    try:
        first_said = _lines_until(first, "update 1 in training")  # the first holds the checkpoint
        second = _membench(tmp_path, *args, MEMBENCH_TEST_HOLD=str(hold))
        _blocked_on_a_lock(second)  # the second waits for the first
    finally:
        (hold / "go").touch()
    outputs = [first_said + first.communicate(timeout=180)[0], second.communicate(timeout=180)[0]]
    assert first.returncode == 0 and second.returncode == 0, outputs
    executed = [int(re.search(r"(\d+) run\(s\) executed", o).group(1)) for o in outputs]
    assert sum(executed) == 2, outputs  # every run computed once, by one of the two
    records = records_in(tmp_path / "out")
    assert sorted(r["task"]["num_patterns"] for r in records) == [16, 32]
    (checkpoint,) = (tmp_path / "ck").glob("*.pt")
    saved = torch.load(checkpoint, weights_only=False)
    assert [row["step"] for row in saved["curve"]] == list(range(1, 41))
    assert (hold / "updates").read_text() == f"{first.pid}\n" * 40  # trained once, by the first
    assert {r["training"]["weights_digest"] for r in records} == {weights_digest(saved["model"])}
    assert not list((tmp_path / "out").rglob("*.tmp")) and not list((tmp_path / "ck").glob("*.tmp"))


def test_reports_of_missing_or_broken_inputs_say_so_in_one_line_and_write_nothing(tmp_path):
    """report, figures and readme on an empty folder, a broken reference table or a lost training curve: one
    line naming the file and the fix, a non-zero exit, and no output file written or half-updated."""
    out = tmp_path / "out"
    assert _invoke("run", "--model", "raw_slots", "--num-patterns", "16", "--queries", "16", "--out", str(out),
                   "--no-progress").exit_code == 0
    table = (out / "table1.md").read_text()  # as `run` wrote it
    (out / "table1.md").write_text("as it was")
    _one_clear_line(_invoke("readme", "--check", "--results", str(tmp_path / "nothing")), "holds no finished run")
    _one_clear_line(_invoke("figures", "--out", str(out)), "no finished Figure 3 run", "--suite fig3-omniglot")
    assert not list(out.glob("fig3*"))
    for name, content in (("empty.csv", ""), ("columns.csv", "a,b\n1,2\n"), ("words.csv", "method,16\nhebb,few\n"),
                          ("negative.csv", "method,16\nhebb,-5\n"), ("twice.csv", "method,16\nhebb,1\nhebb,2\n"),
                          ("inf.csv", "method,16\nhebb,inf\n"), ("header.csv", "method\n"),
                          ("no_rows.csv", "method,16\n")):
        (tmp_path / name).write_text(content)
        _one_clear_line(_invoke("report", "--out", str(out), "--reference", str(tmp_path / name)),
                        f"{tmp_path / name} is not a table of the paper's Table 1", "omit --reference")
    assert (out / "table1.md").read_text() == "as it was"
    from membench.figure3 import load_reference
    with pytest.raises(MembenchError, match="is not a table of the paper's Figure 3 .no column dataset, model"):
        load_reference(tmp_path / "columns.csv")
    for row in ("omniglot,MANN,1.2,abc,1,2", "omniglot,MANN,-1,5,4,6", "omniglot,MANN,1.2,5,6,4",
                "mnist,MANN,1.2,5,4,6"):
        (tmp_path / "fig.csv").write_text(f"dataset,model,memory_k,error,lo,hi\n{row}\n")
        with pytest.raises(MembenchError, match="is not a table of the paper's Figure 3 .dataset omniglot or cifar"):
            load_reference(tmp_path / "fig.csv")
    (path,) = (out / "runs").glob("*.json")
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "training": {"checkpoint_key": "lost", "curve": "training/lost.csv",
                                                       "config": {}, "train_time_s": 1.0}}))
    _one_clear_line(_invoke("report", "--out", str(out)),
                    f"{out / 'training' / 'lost.csv'} is missing: it should be the training curve")
    assert (out / "table1.md").read_text() == "as it was" and "raw_slots" in table


def test_a_file_or_folder_in_the_way_of_an_output_is_named_with_the_fix(tmp_path, monkeypatch):
    """A file where --out's runs/ folder goes, a folder where its table1.md goes, and a $MEMBENCH_CACHE that is a
    file: one line naming that path (not a temporary file's) and what to do."""
    monkeypatch.chdir(tmp_path)
    small = ["--model", "raw_slots", "--num-patterns", "16", "--queries", "16", "--no-progress"]
    (tmp_path / "a").mkdir(), (tmp_path / "a" / "runs").write_text("x")
    _one_clear_line(_invoke("run", *small, "--out", "a"), f"cannot write {Path('a') / 'runs'}: a file is where "
                    "membench needs a folder; move it away, or write somewhere else")
    (tmp_path / "b" / "table1.md").mkdir(parents=True)
    _one_clear_line(_invoke("run", *small, "--out", "b"), f"cannot write {Path('b') / 'table1.md'}: a folder is "
                    "where membench writes a file")
    monkeypatch.setenv("MEMBENCH_CACHE", str(tmp_path / "afile"))
    (tmp_path / "afile").write_text("x")
    tiny = ["--model", "tests.test_runner:Recorder", "--num-patterns", "16", "--queries", "16", "--no-progress"]
    _one_clear_line(_invoke("run", *tiny, "--out", "c"), f"the checkpoint cache {tmp_path / 'afile' / 'checkpoints'} "
                    "is not a folder membench can write in", "set $MEMBENCH_CACHE to another folder")


def test_a_report_writes_all_its_files_or_none(tmp_path, monkeypatch):
    """A folder where the report's last table (table1.tex) or a training-curve figure goes: one line naming it,
    and none of the others written (not a table1.md and .csv beside an old table1.tex)."""
    monkeypatch.chdir(tmp_path)
    assert _invoke("run", "--model", "raw_slots", "--num-patterns", "16", "--queries", "16", "--no-progress",
                   "--out", "a").exit_code == 0
    for name in ("table1.md", "table1.csv", "table1.tex", "training_curves.png", "training_curves.pdf"):
        (tmp_path / "a" / name).unlink(missing_ok=True)
    for blocked in ("table1.tex", "training_curves.pdf"):
        (tmp_path / "a" / blocked).mkdir()
        _one_clear_line(_invoke("report", "--out", "a"), f"cannot write {Path('a') / blocked}: a folder is where "
                        "membench writes a file", "(nothing was written)")
        assert not [p.name for p in (tmp_path / "a").iterdir() if p.is_file()]
        (tmp_path / "a" / blocked).rmdir()


def test_outputs_that_cannot_be_written_are_refused_before_any_work(tmp_path, monkeypatch):
    """run --out, session --to, pack --to and throughput --out under a path whose parent is a file (pack --to not
    named .tgz or .tar.gz); session
    --run naming an unknown model; pack --results and ship --out that are no results folder; ship --checkpoint
    that is no checkpoint: one line naming it, a non-zero exit, nothing run or written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    small = ["--model", "raw_slots", "--num-patterns", "16", "--queries", "16", "--no-progress"]
    _one_clear_line(_invoke("run", *small, "--out", "afile/out"),
                    "--out afile/out is not a folder membench can write in (afile is a file)")
    session = ["session", "--device", "cpu", "--train-time-limit", "60", "--cache", "cache"]
    ok_run = "--model raw_slots --num-patterns 16 --queries 16 --out results/x"
    _one_clear_line(_invoke(*session, "--run", ok_run, "--to", "afile/s.tgz"),
                    "--to's folder afile is not a folder membench can write in (afile is a file)")
    _one_clear_line(_invoke(*session, "--run", "--model nosuch --out results/x", "--to", "out/s.tgz"),
                    "--run '--model nosuch --out results/x'", "nosuch")
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()
    _one_clear_line(_invoke("pack", "--to", "out/p.tgz", "--since", "afile", "--results", "nothing"),
                    "--results nothing is not a folder")
    _one_clear_line(_invoke("pack", "--to", "out/p.zip", "--since", "afile", "--results", "."),
                    "--to out/p.zip is written as a gzipped tar: give it a name ending .tgz or .tar.gz")
    _one_clear_line(_invoke("ship", "--out", "nothing"), "nothing holds no runs/ folder")
    _one_clear_line(_invoke("ship", "--checkpoint", "afile"), "afile is not named <model>-<preset>-<12 hex digits>.pt")
    (tmp_path / "x-quick-0123456789ab.pt").write_text("not a checkpoint")
    _one_clear_line(_invoke("ship", "--checkpoint", "x-quick-0123456789ab.pt"),
                    "checkpoint x-quick-0123456789ab.pt is unreadable")
    (tmp_path / "table.csv").write_text("not,a\nthroughput,table\n")
    _one_clear_line(_invoke("throughput", "--model", "memory_networks", "--num-patterns", "8", "--batch-sizes", "1",
                            "--steps", "1", "--out", "table.csv"), "table.csv is not a throughput CSV")
    assert (tmp_path / "table.csv").read_text() == "not,a\nthroughput,table\n"
    assert not list(tmp_path.glob("out*"))


USER_MODELS = textwrap.dedent('''
    from baselines.raw_slots import RawSlotMemory

    class LearnedWithoutPresets(RawSlotMemory):
        trainable = True
''')


def test_a_model_that_says_it_learns_but_has_no_presets_is_told_what_is_missing(tmp_path, monkeypatch):
    (tmp_path / "presetless.py").write_text(USER_MODELS)  # its own module name: others import tiny_learned
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "presetless", raising=False)
    _one_clear_line(_invoke("run", "--model", "presetless:LearnedWithoutPresets", "--num-patterns", "16",
                            "--out", "out", "--no-progress"),
                    "does not implement presets(): a meta-learned model (trainable = True) implements")


def test_an_option_a_model_does_not_take_is_refused(tmp_path):
    _one_clear_line(_invoke("run", "--model", "raw_slots", "--num-patterns", "16", "--option", "foo=1",
                            "--out", str(tmp_path / "out"), "--no-progress"), "cannot build model 'raw_slots'", "foo")
    assert not (tmp_path / "out").exists()  # refused before any run (and before the output folder is made)


@pytest.mark.parametrize("value", ["16,,32", "1_6", "+16", "16.0"])
def test_a_list_of_numbers_that_is_not_plain_digits_is_refused(tmp_path, value):
    """An empty item, and what int() would take but a reader might not mean (1_6 is 16)."""
    result = _invoke("run", "--num-patterns", value, "--out", str(tmp_path / "out"), "--no-progress")
    _one_clear_line(result, f"expected comma-separated integers such as 16,32; got '{value}'", exit_code=2)
    assert not (tmp_path / "out").exists()


def test_an_error_in_a_model_reached_through_a_symlink_is_still_named(tmp_path, monkeypatch):
    """The traceback's file names are the symlinked ones, the model's source files resolved: both compared
    resolved."""
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "own.py").write_text(_OWN)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "link"))  # imported as link/own.py
    monkeypatch.delitem(sys.modules, "own", raising=False)
    _one_clear_line(_invoke("run", "--model", "own:Raises", "--num-patterns", "16", "--queries", "32", "--out", "out",
                            "--no-progress"), "model 'own:Raises' raised RuntimeError: ", exit_code=1)


def test_an_empty_out_is_refused_not_taken_for_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _invoke("run", "--model", "raw_slots", "--num-patterns", "16", "--queries", "16", "--out", "", "--no-progress")
    _one_clear_line(result, "Invalid value for '--out': is empty; give a path", exit_code=2)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("training, fragment", [
    ({"curve": "training/x.csv", "config": {}}, "training needs a checkpoint_key, a curve (strings) and a config"),
    ({"checkpoint_key": "x", "curve": 5, "config": {}}, "training needs a checkpoint_key, a curve (strings)"),
    ({"checkpoint_key": "x", "curve": "training/x.csv", "config": None}, "and a config (a mapping)"),
    ({"checkpoint_key": "x", "curve": "training/x.csv", "config": {}, "train_time_s": 1.0, "finished": "no"},
     "training's finished is neither true nor false"),
    ({"checkpoint_key": "x", "curve": "/etc/passwd", "config": {}}, "or its curve not training/<checkpoint_key>.csv"),
    ({"checkpoint_key": "../x", "curve": "training/../x.csv", "config": {}},
     "training's checkpoint_key is not a file name"),  # a path out of the results folder, read by report
])
def test_a_record_with_an_incomplete_training_field_is_named(tmp_path, training, fragment):
    args = ["--model", "raw_slots", "--num-patterns", "16", "--queries", "16", "--out", str(tmp_path), "--no-progress"]
    assert _invoke("run", *args).exit_code == 0
    (path,) = (tmp_path / "runs").glob("*.json")
    path.write_text(json.dumps({**json.loads(path.read_text()), "training": training}))
    for command in ("report", "capacity"):
        _one_clear_line(_invoke(command, "--out", str(tmp_path)), str(path), fragment, exit_code=1)


def test_a_checkpoint_key_of_a_plugin_model_with_any_character_but_a_path_separator_is_read(tmp_path):
    """A plugin's model or preset name makes the key (`gain+hebb-quick-...`): its record reads back; one whose key
    climbs out of the results folder does not."""
    from membench.records import _field_problem

    args = ["--model", "raw_slots", "--num-patterns", "16", "--queries", "16", "--out", str(tmp_path), "--no-progress"]
    assert _invoke("run", *args).exit_code == 0
    (path,) = (tmp_path / "runs").glob("*.json")
    record = json.loads(path.read_text())
    training = {"config": {}, "train_time_s": 1.0}
    for key, fine in (("gain+hebb-quick-0123456789ab", True), ("a b@c-quick-0123456789ab", True), ("..", False),
                      ("x/../y", False), ("x\\y", False)):
        problem = _field_problem({**record, "training": {**training, "checkpoint_key": key,
                                                         "curve": f"training/{key}.csv"}})
        assert (problem is None) == fine, (key, problem)


@pytest.mark.parametrize("rows, fragment", [("0,nan,0.1\n1,abc,0.2", "its loss column holds text"),
                                           ("0,0.5,inf\n1,0.4,0.2", "its error column holds a value that is not a "
                                                                      "finite number")])
def test_a_training_curve_holding_text_is_named_and_nothing_is_written(tmp_path, rows, fragment):
    args = ["--model", "raw_slots", "--num-patterns", "16", "--queries", "16", "--out", str(tmp_path), "--no-progress"]
    assert _invoke("run", *args).exit_code == 0
    (path,) = (tmp_path / "runs").glob("*.json")
    training = {"checkpoint_key": "k", "curve": "training/k.csv", "config": {}, "train_time_s": 1.0}
    path.write_text(json.dumps({**json.loads(path.read_text()), "training": training}))
    (tmp_path / "training").mkdir(exist_ok=True)
    (tmp_path / "training" / "k.csv").write_text(f"step,loss,error\n{rows}\n")
    (tmp_path / "table1.md").unlink()
    _one_clear_line(_invoke("report", "--out", str(tmp_path)), "k.csv is not the training curve", fragment,
                    exit_code=1)
    assert not (tmp_path / "table1.md").exists()


@pytest.mark.parametrize("rows, fragment", [("", "ends at step 0, but its record"),
                                           ("0,0.5,0.1\n50,0.4,0.2", "ends at step 50, but its record")])
def test_a_training_curve_cut_short_is_named_and_nothing_is_written(tmp_path, rows, fragment):
    """A record trained 100 updates, logged every 10: a curve with only its header, or ending at step 50, was cut
    (an empty one is drawn only for a run paused before its first logged step)."""
    args = ["--model", "raw_slots", "--num-patterns", "16", "--queries", "16", "--out", str(tmp_path), "--no-progress"]
    assert _invoke("run", *args).exit_code == 0
    (path,) = (tmp_path / "runs").glob("*.json")
    training = {"checkpoint_key": "k", "curve": "training/k.csv", "config": {"log_every": 10}, "steps": 100,
                "train_time_s": 1.0}
    path.write_text(json.dumps({**json.loads(path.read_text()), "training": training}))
    (tmp_path / "training").mkdir(exist_ok=True)
    (tmp_path / "training" / "k.csv").write_text(f"step,loss,error\n{rows}\n" if rows else "step,loss,error\n")
    (tmp_path / "table1.md").unlink()
    _one_clear_line(_invoke("report", "--out", str(tmp_path)), "k.csv " + fragment, "trained 100 updates, logged "
                    "every 10: it is cut short", exit_code=1)
    assert not (tmp_path / "table1.md").exists()


def test_a_preset_no_model_of_the_run_knows_is_refused(tmp_path, monkeypatch, data_root):
    """--preset names a preset of the run's learned models; with none of them it must be a built-in one, and an
    image suite must have points for it: otherwise one line, nothing run or written (before: untrained models ran
    under the default, the learned image curves silently had no runs)."""
    monkeypatch.chdir(tmp_path)
    small = ["run", "--num-patterns", "16", "--queries", "16", "--no-progress", "--out", "out"]
    _one_clear_line(_invoke(*small, "--model", "hopfield_hebb", "--preset", "nope"),
                    "no model of this run has a preset 'nope'; give --preset one of quick, gpu, paper")
    images = ["run", "--suite", "fig3-omniglot", "--num-patterns", "8", "--queries", "64", "--no-progress",
              "--out", "out", "--data-dir", str(data_root), "--preset", "nope"]
    _one_clear_line(_invoke(*images, "--model", "ebmm"),
                    "suite 'fig3-omniglot' has no points for preset 'nope' (curves EBMM_FC, EBMM_conv)")
    _one_clear_line(_invoke(*images, "--model", "raw_slots"), "no model of this run has a preset 'nope'")
    assert not (tmp_path / "out").exists()
    ran = _invoke(*small, "--model", "hopfield_hebb", "--preset", "gpu")  # any built-in one: the default's run
    assert ran.exit_code == 0 and "1 run(s) executed" in ran.output, ran.output
    (record,) = records_in(tmp_path / "out")
    assert record["preset"] == "quick"


def test_a_builtin_model_that_runs_out_of_memory_or_fails_on_its_options_says_so_in_one_line(tmp_path, monkeypatch):
    """Sizes the machine cannot allocate, or an option value the model cannot take (caught deep inside it), give
    one line naming the run's sizes or options, no traceback and no record; without options and memory to
    spare a built-in model's failure stays membench's own (its traceback)."""
    from baselines.raw_slots import RawSlotMemory

    small = ["run", "--num-patterns", "16", "--queries", "16", "--no-progress", "--out", str(tmp_path / "out")]
    failed = _invoke(*small, "--suite", "table1-learned", "--model", "memory_networks", "--option", "train.steps=1",
                     "--option", "embedding_width=64")
    _one_clear_line(failed, "model 'memory_networks' failed with options", "embedding_width", "memory_networks.py:",
                    "where an option's value caused it, change it")

    def no_memory(self, patterns):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(RawSlotMemory, "write", no_memory)
    _one_clear_line(_invoke(*small, "--model", "raw_slots"), "model 'raw_slots' ran out of memory at N=16",
                    "lower --num-patterns")
    monkeypatch.setattr(RawSlotMemory, "write", lambda self, patterns: 1 / 0)
    crashed = _invoke(*small, "--model", "raw_slots")
    assert isinstance(crashed.exception, ZeroDivisionError)
    assert not list((tmp_path / "out").glob("runs/*.json"))


def test_untrained_models_of_a_run_ignore_its_training_options(tmp_path, monkeypatch):
    """`--option train.steps=…` on a suite with untrained models trains its learned ones shorter and leaves the
    others as they are (their run ids too), as --preset does; an option an untrained model does not take is
    still refused, and a training option on a run with no learned model at all (a typo'd one, too) is refused."""
    monkeypatch.chdir(tmp_path)
    small = ["run", "--num-patterns", "16", "--queries", "16", "--no-progress", "--out", "out", "--model", "raw_slots"]
    assert _invoke(*small).exit_code == 0
    again = _invoke(*small, "--model", "memory_networks", "--option", "train.steps=2")
    assert again.exit_code == 0 and "1 run(s) executed, 1 already finished" in again.output, again.output
    (learned,) = records_in(tmp_path / "out", "*memory_networks*.json")
    assert learned["training"]["steps"] == 2
    _one_clear_line(_invoke(*small, "--option", "steps=5"), "raw_slots")
    _one_clear_line(_invoke(*small, "--option", "train.stpes=5"), "no model of this run is meta-learned, so --option "
                    "train.stpes has nothing to train; drop it")


def test_a_run_that_fails_on_input_found_while_running_leaves_no_output_folder(tmp_path, monkeypatch):
    """Memory Networks' embedding width is checked inside the model, after the output folder (and a run lock)
    were made: the folder goes again; one that held results before is kept, and so is one whose run lock
    another process holds. An unknown EBMM energy is refused before any folder is made."""
    from membench.store import discard_if_unused, file_lock

    monkeypatch.chdir(tmp_path)
    bad = ["run", "--suite", "table1-learned", "--model", "memory_networks", "--num-patterns", "16", "--queries",
           "16", "--no-progress", "--option", "train.steps=1", "--option", "embedding_width=64", "--out"]
    _one_clear_line(_invoke(*bad, "new"), "failed with options")
    assert not (tmp_path / "new").exists()
    _one_clear_line(_invoke("run", "--suite", "table1-learned", "--model", "ebmm", "--option", "energy=bogus",
                            "--out", "new"), "unknown energy 'bogus'; valid: gated_rnn")
    assert not (tmp_path / "new").exists()
    assert _invoke("run", "--model", "raw_slots", "--num-patterns", "16", "--queries", "16", "--no-progress",
                   "--out", "old").exit_code == 0
    _one_clear_line(_invoke(*bad, "old"), "failed with options")
    assert len(list((tmp_path / "old" / "runs").glob("*.json"))) == 1
    with file_lock(tmp_path / "busy" / ".locks" / "run.lock"):
        discard_if_unused(tmp_path / "busy")
    assert (tmp_path / "busy" / ".locks" / "run.lock").exists()
    discard_if_unused(tmp_path / "busy")
    assert not (tmp_path / "busy").exists()


def test_a_reader_that_stops_reading_gets_no_error_line():
    """`membench list | head -1`: the pipe closes before membench writes; it ends without 'Error:' or a traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before membench starts (closing it after could come too late under load)
    process = subprocess.Popen([sys.executable, "-m", "membench.cli", "list"], stdout=write_end,
                               stderr=subprocess.PIPE, cwd=REPO_ROOT)
    os.close(write_end)
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 1 and stderr == "", stderr


def test_records_copied_without_their_training_curves_are_told_to_bring_them(tmp_path, monkeypatch):
    """The README's 'beside the committed rows' copy: records alone make `report` name the missing curve and the
    folder to copy it from; with training/ copied too the report is written."""
    import shutil

    (tmp_path / "own_learned.py").write_text(_OWN_LEARNED)
    monkeypatch.chdir(tmp_path)
    result = _invoke("run", "--model", "own_learned:TinyLearned", "--num-patterns", "16", "--queries", "32", "--out",
                     "out", "--checkpoint-dir", "ck", "--no-progress")
    assert result.exit_code == 0, result.output
    shutil.copytree(tmp_path / "out" / "runs", tmp_path / "mine" / "runs")
    _one_clear_line(_invoke("report", "--out", "mine"), "is missing", "the training curve of",
                    "copy it from the folder its record came from (training/ beside runs/)", exit_code=1)
    shutil.copytree(tmp_path / "out" / "training", tmp_path / "mine" / "training")
    result = _invoke("report", "--out", "mine")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mine" / "table1.md").is_file()


def test_an_over_budget_model_is_told_the_fix_its_suite_allows(tmp_path, monkeypatch, data_root):
    """Table 1 takes a larger --budget; a Figure 3 point's budget is fixed (--budget only selects a point), so there
    the fix is sizing the model from the budget from_spec is given."""
    (tmp_path / "own.py").write_text(_OWN)
    monkeypatch.chdir(tmp_path)
    _one_clear_line(_invoke("run", "--model", "own:Soft", "--num-patterns", "16", "--queries", "32", "--budget", "1000",
                            "--out", "out", "--no-progress"),
                    "declares 2048 float32 values", "over the budget of 1000", "(e.g. fewer slots or a smaller "
                    "writable layer) or run with a larger --budget.",
                    exit_code=1)
    _one_clear_line(_invoke("run", "--suite", "fig3-omniglot", "--model", "own:Soft", "--num-patterns", "16",
                            "--queries", "64", "--data-dir", str(data_root), "--out", "out", "--no-progress"),
                    "declares 16384 float32 values", "(e.g. fewer slots or a smaller writable layer); size it from "
                    "the budget its from_spec is given (each point of the sweep has its own).", exit_code=1)
    assert not (tmp_path / "out").exists()


def test_a_learned_model_of_yours_is_named_as_the_run_names_it(tmp_path, monkeypatch):
    """module:Class in its option errors, as an untrained model of yours is, not the bare class name."""
    (tmp_path / "own_learned.py").write_text(_OWN_LEARNED)
    monkeypatch.chdir(tmp_path)
    result = _invoke("run", "--model", "own_learned:TinyLearned", "--option", "sharpnes=2", "--num-patterns", "16",
                     "--out", "out", "--checkpoint-dir", "ck", "--no-progress")
    _one_clear_line(result, "model 'own_learned:TinyLearned' has no option 'sharpnes'. Its options: sharpness")


def test_a_write_the_disk_refuses_names_the_file_asked_for_not_its_temporary_twin(tmp_path, monkeypatch):
    """write_atomic writes a hidden temporary file first; the error a read-only folder gives names the target."""
    from membench import store

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system", str(tmp_path / ".table1.md.host-1.abc.tmp"))

    monkeypatch.setattr(store.tempfile, "mkstemp", read_only)
    with pytest.raises(OSError) as caught:
        store.write_text_atomic(tmp_path / "table1.md", "x")
    assert caught.value.filename == str(tmp_path / "table1.md") and caught.value.strerror == "Read-only file system"
    monkeypatch.undo()

    def failing(handle):  # a write to the temporary file's descriptor: no file name
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as caught:
        store.write_atomic(tmp_path / "table1.md", failing)
    assert caught.value.filename == str(tmp_path / "table1.md") and not list(tmp_path.iterdir())


def test_config_values_of_str_and_int_subclasses_are_stored_as_plain_ones():
    """IntEnum, StrEnum and NumPy strings, which JSON stored before, still are (as their plain values)."""
    import enum

    from membench.options import plain_config

    class Kind(enum.IntEnum):
        WIDE = 3

    class Name(enum.StrEnum):
        LONG = "long"

    assert plain_config({"k": Kind.WIDE, "n": Name.LONG, "s": np.str_("s"), "b": np.bool_(True), "f": (np.float32(1.5),)},
                        "m") == {"k": 3, "n": "long", "s": "s", "b": True, "f": [1.5]}


def test_sigterm_stops_a_command_unless_its_caller_ignores_it():
    """friendly_errors turns SIGTERM into an interrupt while a command runs and puts the caller's handler back;
    a SIGTERM the caller ignores (nohup-like) stays ignored."""
    import signal

    from membench.cli_common import friendly_errors

    during = friendly_errors(lambda: signal.getsignal(signal.SIGTERM))
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        assert during() is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        assert during() not in (signal.SIG_DFL, signal.SIG_IGN) and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_run_paused_before_its_first_logged_step_does_not_stop_its_folders_report(tmp_path):
    """--train-time-limit 0 makes one step, fewer than log_every: the curve holds no row (a header), the run's
    --no-train record is reported and the empty curve is left out of the curves' figure."""
    args = ["--model", "memory_networks", "--num-patterns", "16", "--queries", "16", "--option", "train.steps=500",
            "--checkpoint-dir", str(tmp_path / "ck"), "--out", str(tmp_path / "out"), "--no-progress"]
    assert _invoke("run", *args, "--train-time-limit", "0").exit_code == 3
    assert _invoke("run", *args, "--no-train").exit_code == 0
    (curve,) = (tmp_path / "out" / "training").glob("*.csv")
    assert curve.read_text().splitlines() == ["step,loss,error"]
    result = _invoke("report", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0 and "memory_networks [train.steps=500]" in result.output, result.output
    curve.write_text("\n")  # as such a curve was written before it kept its header
    assert _invoke("report", "--out", str(tmp_path / "out")).exit_code == 0


def test_training_a_gpu_preset_on_a_cpu_is_warned_about_once_it_would_train(tmp_path):
    """A built-in model's gpu preset trained on a CPU: one warning line that it is sized for a GPU (it can take
    hours) and how to bound it; none once its checkpoint is trained, none for the quick preset."""
    args = ["--model", "memory_networks", "--num-patterns", "16", "--queries", "16", "--option", "train.steps=2",
            "--checkpoint-dir", str(tmp_path / "ck"), "--device", "cpu", "--no-progress"]
    first = _invoke("run", *args, "--preset", "gpu", "--out", str(tmp_path / "a"))
    assert first.exit_code == 0, first.output
    assert "training memory_networks's gpu preset on a CPU (2 updates of 128 episodes): this preset is sized for a " \
           "GPU" in first.output and "--train-time-limit bounds it" in first.output
    again = _invoke("run", *args, "--preset", "gpu", "--out", str(tmp_path / "b"))
    assert again.exit_code == 0 and "sized for a GPU" not in again.output
    quick = _invoke("run", *args, "--out", str(tmp_path / "c"))
    assert quick.exit_code == 0 and "sized for a GPU" not in quick.output


def test_the_ray_launcher_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    """`--launcher ray` on a machine without Ray (the optional extra): one line naming the install, no run made.
    (tests/test_ray_launcher.py is skipped where Ray is missing, so this is where the hint is checked.)"""
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, installed or not
    monkeypatch.chdir(tmp_path)
    _one_clear_line(_invoke("run", "--launcher", "ray", "--model", "hopfield_hebb", "--num-patterns", "16",
                            "--queries", "16", "--out", "out", "--no-progress"),
                    "--launcher ray needs Ray: pip install -e '.[ray]'", exit_code=1)
    assert not (tmp_path / "out" / "runs").exists() or not list((tmp_path / "out" / "runs").iterdir())
