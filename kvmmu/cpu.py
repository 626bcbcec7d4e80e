"""CPU code: one source for a plain call and for the explorer's steps.

Every piece of the model that runs on a CPU (a KVM function, an mm
operation, a guest access) is a generator function that yields one
:class:`kvmmu.explorer.Op` per step: each shared-memory access and each lock
operation.  The same generator serves two purposes:

- an explorer actor runs it with ``yield from f(kvm, ...)``, and the explorer
  may switch CPUs at every step;
- a plain call runs it alone: ``run_alone(kvm, f(kvm, ...))`` performs each
  step at once and returns what the function returns.  Nothing can
  interleave, so a step that would wait can never be satisfied:
  :class:`ModelHang` says what it waits for.

**Zoom.**  A chapter that does not teach a function can run it as one step
instead of many: decorate it with :func:`cpu_code` and list its name in the
world's ``zoom`` set (``Kvm(zoom={"kvm_mmu_faultin_pfn"})``).  Called with
that world, the function then yields a single step that runs its whole body
at once.  A zoomed function must not wait inside its step (a lock another
CPU holds, a grace period): the model raises :class:`ZoomError` if it would,
because one indivisible step cannot wait half-way.  Zoom changes how finely
the explorer interleaves, never what the function computes.
"""
from __future__ import annotations

import copy
import functools
import inspect

from .explorer import Op, World

__all__ = ["ModelHang", "ZoomError", "call_chain", "run_alone", "cpu_code", "world_of",
           "Handle", "step_when", "check_vm", "check_vcpu"]


class ModelHang(RuntimeError):
    """Code run alone would wait forever: only another CPU could let it go on.

    A real kernel would hang (or spin) at that point; the message says what
    the code was waiting for.
    """


class ZoomError(RuntimeError):
    """A function zoomed out to one step would have to wait inside that step."""


def world_of(obj):
    """Return the world ``obj`` belongs to: a World itself, or its ``.kvm``/``.world``/``.owner``."""
    if isinstance(obj, World):
        return obj
    for name in ("kvm", "world", "owner"):
        owner = getattr(obj, name, None)
        if isinstance(owner, World):
            return owner
    return None


def _perform(op: Op, cpu: str, world, error=ModelHang):
    # One step on one CPU: it must be able to happen now.
    if op.enabled is not None and not op.enabled(op.prim, op.args, cpu, world):
        if op.prim is None:     # a wait_until()/step_when(): its label says what it waits for
            raise error(f"would wait forever at {op.what()!r}")
        raise error(f"{op.what()} would wait forever: {op.why_blocked(cpu, world)}")
    return op.run(op.prim, op.args, cpu, world)


def call_chain(gen) -> tuple:
    """The CPU code a suspended generator is in, outermost first: ``(module, function)`` pairs.

    Follows ``yield from`` down to the innermost generator (a primitive's
    method or ``step()``), so a step's place in the code can be named.
    """
    if not hasattr(gen, "gi_yieldfrom"):
        raise TypeError(f"gen must be a generator, got {type(gen).__name__}")
    chain = []
    while gen is not None and hasattr(gen, "gi_yieldfrom"):
        frame = gen.gi_frame
        module = frame.f_globals.get("__name__", "") if frame is not None else ""
        chain.append((module, gen.gi_code.co_qualname))
        gen = gen.gi_yieldfrom
    return tuple(chain)


def run_alone(world, gen, cpu: str = "A", *, trace: list | None = None, on_step=None,
              _error=ModelHang):
    """Run CPU code alone, every step at once, and return its result.

    ``world`` is the world the code runs in (the one its steps act on);
    ``cpu`` is the letter the locks record as holder.  With ``trace`` (a
    list), each step's label is appended to it as the step runs; with
    ``on_step`` (a callable), ``on_step(label, chain)`` is called after each
    step, ``chain`` being where the step ran (:func:`call_chain`).  Raises
    :class:`ModelHang` if a step would wait (nobody else can run to end the
    wait), and re-raises whatever the model raises.
    """
    if not isinstance(world, World):
        raise TypeError(f"world must be a kvmmu.explorer.World, got {type(world).__name__}")
    if not hasattr(gen, "send"):
        raise TypeError(f"gen must be a generator (CPU code called with its arguments), "
                        f"got {type(gen).__name__}")
    if trace is not None and not isinstance(trace, list):
        raise TypeError(f"trace must be a list or None, got {type(trace).__name__}")
    if on_step is not None and not callable(on_step):
        raise TypeError(f"on_step must be callable or None, got {type(on_step).__name__}")
    try:
        value = None
        while True:
            y = gen.send(value)
            if type(y) is not Op:
                value = None
                continue
            chain = call_chain(gen) if on_step is not None else None
            value = _perform(y, cpu, world, _error)
            if trace is not None or on_step is not None:
                label = y.label(value, cpu, world)
                if trace is not None:
                    trace.append(label)
                if on_step is not None:
                    on_step(label, chain)
    except StopIteration as stop:
        return stop.value


def _step_when_run(prim, args, cpu, world):
    return args[1]()


def _step_when_enabled(prim, args, cpu, world):
    return bool(args[2](world))


def step_when(label: str, predicate, fn):
    """One step that can only happen once ``predicate(world)`` is true, and then runs ``fn()``.

    The wait and the action are one indivisible step: what the kernel does
    when it re-checks a condition under the lock that keeps it true (for
    instance ``kvm_swap_active_memslots()`` waiting for
    ``mn_active_invalidate_count`` to be zero under ``mn_invalidate_lock``).
    """
    if not isinstance(label, str) or not label:
        raise ValueError(f"label must be a non-empty string, got {label!r}")
    if not callable(predicate) or not callable(fn):
        raise TypeError("predicate and fn must be callable")
    return (yield Op(None, "step", (label, fn, predicate), _step_when_run, _step_when_enabled))


class _Whole:
    """What the step of a zoomed function returns: its value, and its arguments afterwards.

    ``changed`` holds (position or keyword, object) for each argument that is
    a local object of the caller (a ``struct kvm_page_fault``, an ioctl's
    argument): the step ran the function on copies of them, and the caller
    takes their final state from this result, so that an actor rebuilt from
    the results its steps returned holds the same objects (CONTRIBUTING.md,
    "CPU code", rule 2).  It prints as the value, for step labels.
    """

    __slots__ = ("value", "changed")

    def __init__(self, value, changed: tuple):
        self.value, self.changed = value, changed

    def __repr__(self) -> str:
        return repr(self.value)


def _is_local_object(x) -> bool:
    # A mutable plain object the caller owns: not a handle, not part of a world.
    if isinstance(x, (World, Handle, type)) or world_of(x) is not None:
        return False
    params = getattr(type(x), "__dataclass_params__", None)
    if params is not None and params.frozen:
        return False
    return hasattr(x, "__dict__") and not callable(x)


def _run_whole(prim, args, cpu, world):
    # The single step of a zoomed function: its whole body, on this CPU, on
    # copies of the caller's local objects.
    fn, call_args, call_kwargs = args[1]
    places = [(i, a) for i, a in enumerate(call_args) if _is_local_object(a)]
    places += [(k, a) for k, a in call_kwargs.items() if _is_local_object(a)]
    copies = copy.deepcopy([a for _, a in places], world._copy_memo())
    new_args, new_kwargs = list(call_args), dict(call_kwargs)
    for (place, _), twin in zip(places, copies):
        if isinstance(place, int):
            new_args[place] = twin
        else:
            new_kwargs[place] = twin
    value = run_alone(world, fn(*new_args, **new_kwargs), cpu, _error=ZoomError)
    if not places:
        return value                    # nothing to hand back: the plain value
    return _Whole(value, tuple((place, twin) for (place, _), twin in zip(places, copies)))


def _one_step(label: str, fn, args: tuple, kwargs: dict):
    whole = yield Op(None, "step", (label, (fn, args, kwargs)), _run_whole)
    if type(whole) is not _Whole:
        return whole
    for place, twin in whole.changed:
        mine = args[place] if isinstance(place, int) else kwargs[place]
        vars(mine).clear()
        vars(mine).update(vars(twin))
    return whole.value


def cpu_code(fn):
    """Let ``fn`` (a generator function of CPU code) be zoomed out to one step.

    The decorated function is called exactly like ``fn``.  If its first
    argument belongs to a world whose ``zoom`` set names ``fn``, the call
    returns a generator of a single step that runs all of ``fn`` at once;
    otherwise it returns ``fn``'s own generator.
    """
    if not inspect.isgeneratorfunction(fn):
        raise TypeError(f"cpu_code decorates a generator function (CPU code), "
                        f"got {type(fn).__name__} {fn!r}")
    name = fn.__name__

    @functools.wraps(fn)
    def call(*args, **kwargs):
        world = world_of(args[0]) if args else None
        if world is not None and name in getattr(world, "zoom", ()):
            return _one_step(name, fn, args, kwargs)
        return fn(*args, **kwargs)

    return call


def check_vm(name: str, kvm):
    """Return ``kvm`` if it is a VM (a world with TDP page tables and an mm).

    For the modules below ``kvm_host`` that take the VM but cannot import its
    class (CONTRIBUTING.md, "Layers"); ``kvm_host._check_kvm`` checks the class.
    """
    if not isinstance(kvm, World) or not hasattr(kvm, "ept") or not hasattr(kvm, "mm"):
        raise TypeError(f"{name} must be a VM (kvm_main.kvm_create_vm()), "
                        f"got {type(kvm).__name__}")
    return kvm


def check_vcpu(name: str, vcpu):
    """Return ``vcpu`` if it is a vCPU handle of a VM (for the modules below ``kvm_host``)."""
    if not isinstance(vcpu, Handle) or not hasattr(vcpu, "vcpu_id"):
        raise TypeError(f"{name} must be a vCPU (kvm_main.kvm_vm_ioctl_create_vcpu()), "
                        f"got {type(vcpu).__name__}")
    return vcpu


class Handle:
    """A reference to state that lives in a world's shared objects (a vCPU, an mm).

    A CPU may keep a handle across steps: copying it copies nothing (the
    state it names is in the world), and two handles are equal when they
    name the same thing, so an explorer's state key holds the name, not the
    object.  Subclasses set ``_key`` to that name.
    """

    __slots__ = ()
    _key: tuple = ()

    def __deepcopy__(self, memo):
        return self

    def __copy__(self):
        return self

    def __eq__(self, other):
        return type(other) is type(self) and other._key == self._key

    def __hash__(self):
        return hash((type(self).__name__, self._key))
