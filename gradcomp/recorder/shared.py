"""Which parameters are shared, and how they are grouped into the ``layer`` coordinate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from gradcomp.dims import ALL
from gradcomp.recorder._graph import reachable_leaves

__all__ = [
    "Layout",
    "SharedSpec",
    "clean_name",
    "discover_shared",
    "make_layout",
    "named_parameters",
    "resolve_shared",
    "submodule",
]

#: what ``record(shared=...)`` accepts
SharedSpec = nn.Module | str | Sequence[nn.Module | str] | None


@dataclass(frozen=True)
class Layout:
    """The shared parameters and their grouping.

    Attributes:
        names: qualified names of the shared parameters, in model order.
        params: the parameters themselves (same order).
        layers: layer names (without ``"all"``).
        members: for each layer, indices into ``params``.
        units: for each parameter, its number of units (output rows of an owning
            ``nn.Linear``), or 0 when it has none.
        layer_units: for each layer, its number of units, or 0.
        owners: for each parameter, the qualified name of the module that owns it.
    """

    names: tuple[str, ...]
    params: tuple[Tensor, ...]
    layers: tuple[str, ...]
    members: tuple[tuple[int, ...], ...]
    units: tuple[int, ...]
    layer_units: tuple[int, ...]
    owners: tuple[str, ...]

    @property
    def layer_coord(self) -> list[str]:
        """The ``layer`` coordinate: every layer, then ``"all"``."""
        return [*self.layers, ALL]


def clean_name(name: str) -> str:
    """``name`` without the ``_orig_mod`` components ``torch.compile``'s ``OptimizedModule`` adds
    (so compiled and eager models give the same names)."""
    return ".".join(a for a in name.split(".") if a != "_orig_mod")


def named_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Qualified name (:func:`clean_name`) -> parameter, in model order."""
    out: dict[str, nn.Parameter] = {}
    for n, p in model.named_parameters():
        out.setdefault(clean_name(n), p)
    return out


def submodule(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (a :func:`clean_name`; the original module, not its
    compiled wrapper)."""
    found = _modules(model).get(name)
    if found is None:
        raise AttributeError(f"the model has no submodule {name!r}")
    return found


def _modules(model: nn.Module) -> dict[str, nn.Module]:
    # parents come first: the innermost module of a name (not its compiled wrapper) wins
    return {clean_name(n): m for n, m in model.named_modules(remove_duplicate=False)}


_named = named_parameters


def resolve_shared(model: nn.Module, shared: SharedSpec) -> list[str]:
    """Names of the parameters a user named as shared (``shared`` not ``None``).

    Args:
        model: the model.
        shared: a module, a parameter name, or a sequence of them.

    Returns:
        Qualified parameter names, in model order, that require grad.
    """
    named = _named(model)
    by_id = {id(p): n for n, p in named.items()}
    items = [shared] if isinstance(shared, (nn.Module, str)) else list(shared or [])
    chosen: set[str] = set()
    for item in items:
        if isinstance(item, nn.Module):
            ps = [p for p in item.parameters() if p.requires_grad]
            missing = [p for p in ps if id(p) not in by_id]
            if missing:
                raise ValueError("a module given as shared= is not part of the recorded model")
            chosen.update(by_id[id(p)] for p in ps)
        elif isinstance(item, str):
            item = clean_name(item)
            if item not in named:
                close = [n for n in named if item in n][:5]
                raise ValueError(f"shared= names unknown parameter {item!r}; similar: {close}")
            if not named[item].requires_grad:
                raise ValueError(f"shared parameter {item!r} does not require grad")
            chosen.add(item)
        else:
            raise TypeError(f"shared= takes modules or parameter names, got {type(item).__name__}")
    if not chosen:
        raise ValueError(
            "no shared parameters: shared= selects no parameter that requires grad; "
            "pass the shared trunk (a module), parameter names, or shared=None to discover them"
        )
    return [n for n in named if n in chosen]


def discover_shared(model: nn.Module, losses: Mapping[str, Tensor]) -> list[str]:
    """Parameters reached by the graphs of two or more task losses (``shared=None``).

    Args:
        model: the model.
        losses: one scalar loss per task, graphs still alive.

    Returns:
        Qualified names in model order.
    """
    named = _named(model)
    by_id = {id(p): n for n, p in named.items()}
    count: dict[str, int] = {}
    for loss in losses.values():
        for leaf in reachable_leaves([loss]):
            name = by_id.get(id(leaf))
            if name is not None:
                count[name] = count.get(name, 0) + 1
    found = {n for n, c in count.items() if c >= 2}
    if not found:
        raise ValueError(
            "no shared parameters: no parameter of the model receives gradient from two or more "
            "tasks. Check that the task losses come from this model, or pass shared= explicitly"
        )
    return [n for n in named if n in found]


def _owner_module(modules: Mapping[str, nn.Module], name: str) -> tuple[str, nn.Module]:
    mod_name = name.rpartition(".")[0]
    return mod_name, modules[mod_name]


def _unit_count(module: nn.Module, param: Tensor) -> int:
    if isinstance(module, nn.Linear) and param.ndim >= 1 and param.shape[0] == module.out_features:
        return int(module.out_features)
    return 0


def make_layout(
    model: nn.Module, names: Sequence[str], layers: str | Mapping[str, Sequence[str]]
) -> Layout:
    """Group shared parameters into layers.

    Args:
        model: the model.
        names: shared parameter names (model order).
        layers: ``"module"`` (one layer per module that owns shared parameters),
            ``"param"`` (one per parameter tensor), or a mapping layer name -> parameter names.

    Returns:
        The :class:`Layout`.
    """
    named = _named(model)
    modules = _modules(model)
    owners = [_owner_module(modules, n) for n in names]
    units = tuple(_unit_count(m, named[n]) for n, (_, m) in zip(names, owners, strict=True))
    index = {n: i for i, n in enumerate(names)}
    groups: dict[str, list[int]] = {}
    if layers == "module":
        for i, (mod_name, _) in enumerate(owners):
            groups.setdefault(mod_name or "model", []).append(i)
    elif layers == "param":
        groups = {n: [i] for i, n in enumerate(names)}
    elif isinstance(layers, Mapping):
        for layer, members in layers.items():
            if layer == ALL:
                raise ValueError(f"layer name {ALL!r} is reserved for every shared parameter")
            for m in [members] if isinstance(members, str) else members:
                if m not in index:
                    raise ValueError(f"layers[{layer!r}] names {m!r}, which is not shared")
                groups.setdefault(str(layer), []).append(index[m])
    else:
        raise ValueError(f"layers must be 'module', 'param' or a mapping, got {layers!r}")
    layer_units = []
    for idx in groups.values():
        us = {units[i] for i in idx}
        mods = {owners[i][0] for i in idx}
        layer_units.append(us.pop() if len(us) == 1 and len(mods) == 1 else 0)
    return Layout(
        names=tuple(names),
        params=tuple(named[n] for n in names),
        layers=tuple(groups),
        members=tuple(tuple(v) for v in groups.values()),
        units=units,
        layer_units=tuple(layer_units),
        owners=tuple(o for o, _ in owners),
    )
