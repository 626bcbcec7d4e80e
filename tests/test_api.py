"""The public API: what each module exports, and that every export rejects bad arguments.

Every module of the model declares ``__all__``; a function that is not API
starts with an underscore.  Every exported callable is then fed bad
arguments (negative, out of range, float, string, None, and an object of
the wrong kind):

- **all bad**: every required argument bad at once; the call (for CPU code:
  the call and its first step) must raise ``TypeError`` or ``ValueError``;
- **one bad**: where a valid call can be built from the fixtures below, each
  argument in turn is made bad while the others stay valid, and the call
  must again raise ``TypeError``/``ValueError``, never anything else and
  never return quietly.

Hypothesis draws the bad values; a fixed seed and the deterministic order of
the callables keep the run reproducible.
"""
import importlib
import inspect
import os
import pkgutil
import types

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import kvmmu

#: Modules whose exports are API.  The views are excluded: their pure
#: functions must never raise (tests/test_widgets_survive.py drives them);
#: so is the command line, which answers any input (tests/test_cli.py).
SKIP_PACKAGES = ("viz", "cli")

#: Exports that accept any argument by design, and why.
ACCEPTS_ANYTHING = {
    "kvmmu.cpu.world_of": "answers None for an object that has no world",
    "kvmmu.memslots.kvm_is_visible_memslot": "None is 'no slot' (not visible)",
    # The argument checkers themselves: ``name`` is only the label of their
    # message, and the values they accept are theirs to define (test_core).
    "kvmmu.checks.check_int": "an argument checker", "kvmmu.checks.check_u64": "an argument checker",
    "kvmmu.checks.check_bool": "an argument checker", "kvmmu.checks.check_name": "an argument checker",
    "kvmmu.checks.check_choice": "an argument checker",
    "kvmmu.mmu.describe_found_slot": "None is 'no slot' (a lookup that found none)",
    "kvmmu.exercises.base.show_value": "shows any parameter value as text",
}


#: Exports that take any int by design (casts and namers); only non-ints are bad.
ANY_INT = {
    "kvmmu.bits.u64": "a C cast: any int folds to 64 bits",
    "kvmmu.bits.c_int": "a C cast: any int folds to 32 bits",
    "kvmmu.errno.errno_name": "names any return value (unknown ones as numbers)",
    "kvmmu.errno.ret_pf_name": "names any return value (unknown ones as numbers)",
}

#: Arguments for which None is a valid value (the kernel's NULL), by export.
ALLOWS_NONE = {
    "kvmmu.kvm_host.gfn_to_hva_memslot_prot": {"slot"},     # no slot: KVM_HVA_ERR_BAD
}


def _modules():
    out = []
    for info in pkgutil.walk_packages(kvmmu.__path__, "kvmmu."):
        short = info.name.split(".")[1]
        if short in SKIP_PACKAGES or info.name.split(".")[-1].startswith("_"):
            continue
        out.append(importlib.import_module(info.name))
    return sorted(out, key=lambda m: m.__name__)


MODULES = _modules()


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_every_module_declares_its_exports(module):
    assert hasattr(module, "__all__"), f"{module.__name__} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert missing == [], f"{module.__name__}.__all__ names what it lacks: {missing}"
    # A public function or class defined here is exported; a helper is _private.
    public = sorted(n for n, obj in vars(module).items()
                    if not n.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
                    and getattr(obj, "__module__", None) == module.__name__)
    unexported = [n for n in public if n not in module.__all__]
    assert unexported == [], (f"{module.__name__}: public but not in __all__ "
                              f"(export them or give them a leading underscore): {unexported}")


def _exported_callables():
    seen, out = set(), []
    for module in MODULES:
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name, None)
            if not callable(obj) or getattr(obj, "__module__", None) != module.__name__:
                continue
            key = f"{module.__name__}.{name}"
            if key in seen or key in ACCEPTS_ANYTHING:
                continue
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                continue
            seen.add(key)
            out.append((key, obj))
    return out


CALLABLES = _exported_callables()


def _required(obj):
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params = [p for p in sig.parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
              and p.default is p.empty]
    return params


class _Wrong:
    """An object of no kind the model knows."""


BAD = st.sampled_from([-1, 1 << 64, 1.5, "x", None, _Wrong()])
BAD_NOT_INT = st.sampled_from([1.5, "x", None, _Wrong()])
#: For a parameter annotated ``str``, "x" is a good value, not a bad one.
BAD_NOT_STR = st.sampled_from([-1, 1 << 64, 1.5, None, _Wrong()])


def _bad_strategy(key, param):
    if param.annotation in (str, "str"):
        return BAD_NOT_STR
    return BAD_NOT_INT if key in ANY_INT else BAD


def _call(obj, args):
    """Call and, for CPU code, start it: bad arguments must be refused by then."""
    result = obj(*args)
    if isinstance(result, types.GeneratorType):
        try:
            next(result)
        except StopIteration:
            pass
        finally:
            result.close()
    return result


def _count_call(key):
    """tools/measure_model.py --api counts the calls: one line per call."""
    path = os.environ.get("KVMMU_API_CALLS")
    if path:
        with open(path, "a") as f:
            f.write(key + "\n")


def _bad_call_refused(key, obj, args):
    _count_call(key)
    try:
        _call(obj, args)
    except (TypeError, ValueError):
        return None
    except Exception as e:          # noqa: BLE001 - the point is to see which
        return f"{key}{tuple(args)!r} raised {type(e).__name__}: {e}"
    return f"{key}{tuple(args)!r} returned without complaint"


@pytest.mark.parametrize("key, obj", CALLABLES, ids=[k for k, _ in CALLABLES])
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_export_refuses_all_bad_arguments(key, obj, data):
    params = _required(obj)
    if not params:
        pytest.skip("no required argument to make bad")
    args = [data.draw(_bad_strategy(key, p)) for p in params]
    problem = _bad_call_refused(key, obj, args)
    assert problem is None, problem


# ---------------------------------------------------------------------------
# One bad argument at a time, around a valid call built from fixtures
# ---------------------------------------------------------------------------
def _fixtures():
    """Valid values by parameter name, for building a valid call."""
    from kvmmu.host_mm import host_populate
    from kvmmu.kvm_main import kvm_create_vm, kvm_vm_ioctl_create_vcpu, set_memory_region
    from kvmmu.mmu import kvm_mmu_load
    from kvmmu.mmu_internal import KvmPageFault
    from kvmmu.spte import EPT_AD
    kvm = kvm_create_vm()
    vcpu = kvm_vm_ioctl_create_vcpu(kvm)
    set_memory_region(kvm, 1, 0x100000, 0x200000, 0x7F0000000000)
    host_populate(kvm.mm, 0x7F0000000000, 512, "4K")
    kvm_mmu_load(vcpu)
    slot = kvm.kvm_memslots().slots[0]
    fault = KvmPageFault(addr=0x100000, error_code=0, prefetch=False, slot=slot,
                         root=vcpu.root)
    return {
        "kvm": kvm, "vcpu": vcpu, "slot": slot, "mm": kvm.mm, "fault": fault, "cfg": EPT_AD,
        "gfn": 0x100, "gpa": 0x100000, "hva": 0x7F0000000000, "level": 1, "pfn": 0x1234,
        "spte": 0x8600000012345B77, "old_spte": 0x8600000012345B77,
        "new_spte": 0x8000000000000000, "start": 0x100, "end": 0x101, "size": 0x1000,
        "npages": 1, "as_id": 0, "offset": 0, "value": 0, "index": 0, "count": 1,
        "write": False, "shared": True, "flush": False, "prefetch": False,
        "error_code": 0, "mmu_seq": 0, "gen": 0, "flags": 0,
    }


_FIXTURES = None


def _valid_args(obj):
    global _FIXTURES
    if _FIXTURES is None:
        _FIXTURES = _fixtures()
    params = _required(obj)
    if not params or any(p.name not in _FIXTURES for p in params):
        return None
    return [_FIXTURES[p.name] for p in params]


def _bad_values_for(value):
    if isinstance(value, bool):
        return [2, "x", None, 1.5]
    if isinstance(value, int):
        return [-1, 1 << 64, 1.5, "x", None]
    if isinstance(value, str):
        return [None, -1, 1.5]
    return [None, -1, "x", _Wrong()]


def _one_bad_cases():
    cases = []
    for key, obj in CALLABLES:
        if inspect.isclass(obj):
            continue
        try:
            args = _valid_args(obj)
        except Exception:       # noqa: BLE001 - fixtures of other chapters may not build yet
            args = None
        if args is None:
            continue
        cases.append((key, obj))
    return cases


ONE_BAD = _one_bad_cases()


@pytest.mark.parametrize("key, obj", ONE_BAD, ids=[k for k, _ in ONE_BAD])
def test_every_export_refuses_each_bad_argument(key, obj):
    args = _valid_args(obj)
    try:
        _call(obj, list(args))
    except Exception as e:      # noqa: BLE001
        pytest.skip(f"the fixtures do not make a valid call: {type(e).__name__}: {e}")
    problems = []
    names = [p.name for p in _required(obj)]
    for i, value in enumerate(args):
        for bad in _bad_values_for(value):
            if bad is None and names[i] in ALLOWS_NONE.get(key, ()):
                continue
            if isinstance(bad, int) and key in ANY_INT:
                continue
            trial = list(_valid_args(obj))
            trial[i] = bad
            problem = _bad_call_refused(key, obj, trial)
            if problem is not None:
                problems.append(problem)
    assert problems == [], "\n".join(problems[:10])


def test_the_api_test_covers_the_package():
    # The counts the issue asks for, checked to be non-trivial.
    assert len(CALLABLES) >= 200, len(CALLABLES)
    print(f"{len(CALLABLES)} exported callables; {len(ONE_BAD)} with a valid fixture call")
