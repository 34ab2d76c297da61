"""The fused tier's Triton kernels as Triton compiles them for an H100 (sm_90), on CPU-only CI.

The interpreter (tests/test_fused.py) checks what the kernels compute; this checks what the GPU
would execute: every kernel of every config compiles for sm_90, as the JIT specialises a launch over
a real bucket, and its PTX moves each flat buffer once per step with 128-bit accesses, i.e. exactly
the floor bytes each rule module declares (docs/algorithms.md section 7), which step time is
measured against. Compiling
needs a process without ``TRITON_INTERPRET=1``, so one subprocess runs this file as a script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from conftest import CONFIGS, config_id  # noqa: E402

import torchopt_zoo as zoo  # noqa: E402

DTYPES = ("float32", "bfloat16")
SHAPES = [(5,), (20, 15), (17,)]  # 322 elements: the buckets pad them to 336


def zoo_adam_rule():
    return zoo.Adam.rule


def _compile_all() -> dict:
    """Run in the subprocess: the traffic of every config's step launches, per dtype."""
    import torch

    from torchopt_zoo.tiers import codegen as triton_codegen, triton as triton_rules

    out = {}
    for cls, kw in CONFIGS:
        for dtype in DTYPES:
            params = [torch.randn(s, dtype=getattr(torch, dtype), requires_grad=True) for s in SHAPES]
            opt = cls(params, lr=1e-3, fused=True, **kw)
            for p in params:
                p.grad = torch.randn_like(p)
            bucket, traffic = triton_codegen.optimizer_traffic(opt)  # a Triton bucket, not launched
            assert bucket.triton
            runs = {f"{config_id((cls, kw))}/{dtype}": traffic}
            if cls.__name__ == "Adam" and not kw and dtype == "float32":
                adam = opt.param_groups[0], bucket  # the AMP launch: grad_scale and found_inf on the device
                runs[f"Adam/{dtype}/amp"] = triton_codegen.optimizer_traffic(
                    opt, grad_scale=torch.ones(()), found_inf=torch.zeros(()))[1]
                opt.param_groups[0]["lr"] = torch.tensor(1e-3)  # on the bucket's device: read by the kernel
                runs[f"Adam/{dtype}/tensor_lr"] = triton_codegen.optimizer_traffic(opt)[1]
                opt.param_groups[0]["lr"] = 1e-3
            for key, traffic in runs.items():
                out[key] = {"traffic": [vars(t) for t in traffic], "states": len(bucket.flats),
                            "n": bucket.param.numel()}
            table_params = [torch.randn(s, dtype=getattr(torch, dtype), requires_grad=True) for s in SHAPES]
            table_opt = cls(table_params, lr=1e-3, **kw)  # the default tier: address tables, nothing moved
            for p in table_params:
                p.grad = torch.randn_like(p)
            out[f"{config_id((cls, kw))}/{dtype}/table"] = triton_codegen.table_traffic(table_opt)
    # a group past 2**31 elements: 64-bit offsets (LARGE), still one vectorised pass
    kernel, _, args, constexprs = triton_rules.launches(zoo_adam_rule(), *adam, {}, None, None)[0]
    args = (*args[:5], 2**31 + 2**20, *args[6:])
    compiled = triton_codegen.compile_launch(kernel, args, {**constexprs, "LARGE": True})
    out["large"] = {"traffic": [vars(triton_codegen.traffic(compiled, constexprs["BLOCK"]))],
                    "wide": "mul.wide" in compiled.asm["ptx"] or ".s64" in compiled.asm["ptx"]}
    return out


@pytest.fixture(scope="module")
def compiled():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    run = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=900,
                         cwd=os.path.dirname(__file__))
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _expected_bytes(name: str, dtype: str, states: int, wd: float) -> list[float]:
    """One pass: the parameter read and written, the gradient read, each state buffer (float32)
    read and written. AdaGrad-Norm reads the gradient (and, with coupled weight decay, the
    parameter) once more in its norm pass."""
    size = 4 if dtype == "float32" else 2
    update = 2 * size + size + 8 * states
    if name.startswith("AdaGradNorm"):
        return [size + (size if wd else 0), update]
    return [update]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_one_vectorised_pass_per_step(compiled, cfg, dtype):
    name = config_id(cfg)
    result = compiled[f"{name}/{dtype}"]
    assert result["n"] % 16 == 0  # what lets the JIT vectorise
    traffic = result["traffic"]
    assert [t["bytes_per_element"] for t in traffic] == _expected_bytes(
        name, dtype, result["states"], cfg[1].get("weight_decay", 0))
    for t in traffic:
        assert t["scalar_stores"] == 0  # every per-element store is 128 bits wide
        # only the 0-dim step count and the rule's 0-dim state (no per-element scalar loads)
        assert t["scalar_loads"] <= 1 + len(cfg[0].rule.scalar_state)
    assert sum(t["atomics"] for t in traffic) == (1 if name.startswith("AdaGradNorm") else 0)
    if dtype == "float32" and not cfg[1]:  # the rule's defaults: exactly the floor its module declares
        assert sum(t["bytes_per_element"] for t in traffic) == cfg[0].rule.floor_bytes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_address_table_kernels_move_the_floor_bytes(compiled, cfg, dtype):
    """The default tier's launch over address tables moves exactly the bytes of one pass per tensor
    (measured per element, whatever the accesses' width: 32-bit where an address from a table gives
    the compiler no alignment to vectorise with)."""
    name = config_id(cfg)
    flat = compiled[f"{name}/{dtype}"]
    assert compiled[f"{name}/{dtype}/table"] == _expected_bytes(name, dtype, flat["states"],
                                                                   cfg[1].get("weight_decay", 0))
    if dtype == "float32" and not cfg[1]:
        assert sum(compiled[f"{name}/{dtype}/table"]) == cfg[0].rule.floor_bytes


@pytest.mark.parametrize("cls", zoo.OPTIMIZERS, ids=lambda c: c.__name__)
def test_every_rule_declares_its_floor_and_is_compiled(compiled, cls):
    """A registered rule without floor bytes, a Triton kernel or a default config fails here."""
    assert isinstance(cls.rule.floor_bytes, int) and cls.rule.floor_bytes > 0
    assert cls.rule.launches is not None, f"{cls.__name__} has no Triton kernel"
    assert cls.configs and cls.configs[0] == {}, "the first config must be the rule's defaults"
    for dtype in DTYPES:
        assert f"{cls.__name__}/{dtype}" in compiled and f"{cls.__name__}/{dtype}/table" in compiled


def test_amp_operands_add_no_per_element_traffic(compiled):
    plain, amp = compiled["Adam/float32"]["traffic"][0], compiled["Adam/float32/amp"]["traffic"][0]
    assert amp["bytes_per_element"] == plain["bytes_per_element"] == 28
    assert amp["scalar_stores"] == 0 and amp["scalar_loads"] <= plain["scalar_loads"] + 2  # grad_scale, found_inf


def test_a_device_tensor_lr_is_one_scalar_load(compiled):
    plain, lr = compiled["Adam/float32"]["traffic"][0], compiled["Adam/float32/tensor_lr"]["traffic"][0]
    assert lr["bytes_per_element"] == plain["bytes_per_element"] == 28
    assert lr["scalar_stores"] == 0 and lr["scalar_loads"] == plain["scalar_loads"] + 1


def test_groups_past_2_31_elements_compile_with_64_bit_offsets(compiled):
    large = compiled["large"]
    assert large["wide"]
    assert large["traffic"][0]["bytes_per_element"] == 28 and large["traffic"][0]["scalar_stores"] == 0


if __name__ == "__main__":
    print(json.dumps(_compile_all()))
