"""Constructor signatures read from the source, without importing the module.

A config node's schema is the signature of the class its `_target_` names: parameter names, type hints
(`ad.values` kinds such as `PositiveInt` or `Fraction` carry the allowed range) and defaults. Reading it with
`ast` instead of `inspect` keeps compose-time checks free of torch: `model=patchcore` is checked without
importing the model (about a millisecond per module). `tests/test_schema.py` holds this reader to
`inspect.signature` for every option, so the two cannot drift.
"""
from __future__ import annotations

import ast
import importlib.util
import builtins
import importlib
import typing
from dataclasses import dataclass
from functools import lru_cache
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ad.errors import ConfigError


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


REQUIRED = _Marker("REQUIRED")  # a parameter without a default
NOT_LITERAL = _Marker("NOT_LITERAL")  # a default that is an expression (not a literal): left to the constructor

# Modules whose names an annotation may use with their real meaning; any other name is opaque (typing.Any).
_KNOWN_MODULES = ("typing", "ad.values", "collections.abc")
_BUILTIN_TYPES = {name: getattr(builtins, name) for name in ("int", "float", "str", "bool", "dict", "list", "tuple",
                                                             "object", "bytes", "set")}


class NestedSchema:
    """The type of a parameter that is a config node of its own (a dataclass such as `EarlyStoppingSettings`):
    `nested(target)` makes one subclass per target, so it can stand inside Optional[...] like any type."""

    target: str = ""


@lru_cache(maxsize=None)
def nested(target: str) -> type:
    return type(f"Nested[{target}]", (NestedSchema,), {"target": target})


def nested_target(tp: Any) -> Optional[str]:
    return tp.target if isinstance(tp, type) and issubclass(tp, NestedSchema) and tp is not NestedSchema else None


@dataclass(frozen=True)
class Param:
    name: str
    type: Any  # a typing object: int, Optional[PositiveInt], Literal["a", "b"], Sequence[int], Any (opaque)...
    default: Any = REQUIRED  # the literal default, REQUIRED or NOT_LITERAL


@dataclass(frozen=True)
class Signature:
    target: str  # dotted path of the class
    params: Dict[str, Param]
    open: bool = False  # **kwargs that lead nowhere readable: any further key is accepted

    def literal_defaults(self) -> Dict[str, Any]:
        """Keys and defaults for the config node (REQUIRED as "???"; expression defaults are left out)."""
        out: Dict[str, Any] = {}
        for p in self.params.values():
            if p.default is REQUIRED:
                out[p.name] = "???"
            elif p.default is not NOT_LITERAL:
                out[p.name] = list(p.default) if isinstance(p.default, tuple) else p.default
            elif nested_target(p.type):  # default_factory=SomeSettings: the nested node's own defaults
                out[p.name] = signature_of(nested_target(p.type)).literal_defaults()
        return out


# --- finding and parsing a module without importing it ----------------------------------------------------
@lru_cache(maxsize=None)
def module_file(module: str) -> Optional[Path]:
    """The source file of a dotted module name, found without executing any package `__init__`."""
    parts = module.split(".")
    search: Optional[List[str]] = None
    spec = None
    for i in range(len(parts)):
        # The top-level package through every finder (an editable install's finder is not on sys.path); below
        # it, by path, so no package __init__ runs.
        spec = importlib.util.find_spec(parts[0]) if i == 0 else PathFinder.find_spec(".".join(parts[: i + 1]), search)
        if spec is None:
            return None
        search = list(spec.submodule_search_locations or [])
    origin = getattr(spec, "origin", None)
    return Path(origin) if origin and origin.endswith(".py") else None


@lru_cache(maxsize=None)
def _parse(path: Path, mtime: float) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _module_ast(module: str) -> Optional[ast.Module]:
    path = module_file(module)
    if path is None:
        return None
    return _parse(path, path.stat().st_mtime)


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_package(module: str) -> bool:
    path = module_file(module)
    return path is not None and path.name == "__init__.py"


# --- annotations -------------------------------------------------------------------------------------------
class _Namespace:
    """What the names in a module's annotations mean: typing/ad.values names as themselves, classes of this
    module by their AST, anything else opaque."""

    def __init__(self, module: str, tree: ast.Module) -> None:
        self.module = module
        self.names: Dict[str, Any] = {}
        self.imported: Dict[str, Tuple[str, str]] = {}  # local name -> (module, attribute)
        self.modules: Dict[str, str] = {}  # `import typing as t` -> t: typing
        self.classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef) and _is_dataclass(n)}
        package = _is_package(module)
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                source = _absolute(module, node, package)
                for alias in node.names:
                    self.imported[alias.asname or alias.name] = (source, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    self.modules[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]

    def lookup(self, name: str) -> Any:
        if name in self.imported:
            source, attr = self.imported[name]
            if source in _KNOWN_MODULES:
                return getattr(importlib.import_module(source), attr, Any)
            found = _find_class(source, attr) if source.startswith("ad.") else None
            if found is not None and _is_dataclass(found[1]):
                return nested(f"{found[0]}.{attr}")
            return Any
        if name in _BUILTIN_TYPES:
            return _BUILTIN_TYPES[name]
        if name == "None":
            return type(None)
        if name in self.classes:  # a settings dataclass of this module: a nested node
            return nested(f"{self.module}.{name}")
        return Any

    def attribute(self, node: ast.Attribute) -> Any:
        if isinstance(node.value, ast.Name) and self.modules.get(node.value.id) in _KNOWN_MODULES:
            return getattr(importlib.import_module(self.modules[node.value.id]), node.attr, Any)
        return Any


_ARITHMETIC = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
               ast.Div: lambda a, b: a / b, ast.Pow: lambda a, b: a ** b}


def _literal(node: ast.AST) -> Any:
    """A literal, or constant arithmetic such as `2**32 - 1`; NOT_LITERAL for anything else."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        a, b = _literal(node.left), _literal(node.right)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
                and not (isinstance(node.op, ast.Pow) and abs(b) > 64):
            return _ARITHMETIC[type(node.op)](a, b)
    return NOT_LITERAL


def _eval_type(node: Optional[ast.AST], ns: _Namespace) -> Any:
    """A typing object for an annotation's AST; whatever cannot be read is `Any` (accepts every value)."""
    if node is None:
        return Any
    try:
        return _eval(node, ns)
    except Exception:  # noqa: BLE001 - an unreadable annotation only loses its check, never the key
        return Any


def _eval(node: ast.AST, ns: _Namespace) -> Any:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, str):  # a quoted (forward) annotation
            return _eval(ast.parse(node.value, mode="eval").body, ns)
        return type(None) if node.value is None else Any
    if isinstance(node, ast.Name):
        return ns.lookup(node.id)
    if isinstance(node, ast.Attribute):
        return ns.attribute(node)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return typing.Union[_eval(node.left, ns), _eval(node.right, ns)]
    if isinstance(node, ast.Call):  # Range(0, 1, low_open=True) inside Annotated[...]
        func = _eval(node.func, ns)
        if func is Any or not isinstance(func, type):
            return Any
        return func(*[_literal(a) for a in node.args], **{k.arg: _literal(k.value) for k in node.keywords if k.arg})
    if isinstance(node, ast.Subscript):
        base = _eval(node.value, ns)
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base is typing.Literal:
            return typing.Literal[tuple(_literal(i) for i in items)]
        if base is Any:
            return Any
        args = tuple(Ellipsis if isinstance(i, ast.Constant) and i.value is Ellipsis else _eval(i, ns) for i in items)
        return base[args if len(args) > 1 else args[0]]
    return Any


# --- classes and their parameters --------------------------------------------------------------------------
def _find_class(module: str, name: str, depth: int = 0) -> Optional[Tuple[str, ast.ClassDef]]:
    """The ClassDef of `module.name`, following `from x import name` re-exports (as a moved class leaves)."""
    tree = _module_ast(module)
    if tree is None or depth > 8:
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return module, node
    package = _is_package(module)
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _find_class(_absolute(module, node, package), alias.name, depth + 1)
    return None


def _base_classes(module: str, cls: ast.ClassDef) -> List[Tuple[str, ast.ClassDef]]:
    out = []
    for base in cls.bases:
        if isinstance(base, ast.Name):
            found = _find_class(module, base.id)
            if found is not None:
                out.append(found)
    return out


def _is_dataclass(cls: ast.ClassDef) -> bool:
    for d in cls.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if (isinstance(target, ast.Name) and target.id == "dataclass") or \
                (isinstance(target, ast.Attribute) and target.attr == "dataclass"):
            return True
    return False


def _field_default(value: Optional[ast.AST]) -> Any:
    if value is None:
        return REQUIRED
    if isinstance(value, ast.Call) and getattr(value.func, "id", getattr(value.func, "attr", "")) == "field":
        kw = {k.arg: k.value for k in value.keywords}
        if "default" in kw:
            return _literal(kw["default"])
        factory = kw.get("default_factory")
        if isinstance(factory, ast.Name) and factory.id in ("list", "dict", "tuple"):
            return {"list": [], "dict": {}, "tuple": ()}[factory.id]
        return NOT_LITERAL
    return _literal(value)


def _dataclass_params(module: str, cls: ast.ClassDef, ns: _Namespace) -> Dict[str, Param]:
    params: Dict[str, Param] = {}
    for base_module, base in _base_classes(module, cls):
        if _is_dataclass(base):
            params.update(_dataclass_params(base_module, base, _Namespace(base_module, _module_ast(base_module))))
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            tp = _eval_type(node.annotation, ns)
            if typing.get_origin(tp) is typing.ClassVar or tp is typing.ClassVar:
                continue
            params[node.target.id] = Param(node.target.id, tp, _field_default(node.value))
    return params


def _function_params(fn: ast.FunctionDef, ns: _Namespace, skip_first: bool) -> Dict[str, Param]:
    args = fn.args
    positional = args.posonlyargs + args.args
    if skip_first:
        positional = positional[1:]
    defaults: List[Any] = [REQUIRED] * (len(positional) - len(args.defaults)) + [_literal(d) for d in args.defaults]
    params = {a.arg: Param(a.arg, _eval_type(a.annotation, ns), d) for a, d in zip(positional, defaults)}
    for a, d in zip(args.kwonlyargs, args.kw_defaults):
        params[a.arg] = Param(a.arg, _eval_type(a.annotation, ns), REQUIRED if d is None else _literal(d))
    return params


def _class_signature(module: str, cls: ast.ClassDef) -> Tuple[Dict[str, Param], bool]:
    ns = _Namespace(module, _module_ast(module))
    init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is None:
        if _is_dataclass(cls):
            return _dataclass_params(module, cls, ns), False
        for base_module, base in _base_classes(module, cls):
            return _class_signature(base_module, base)
        return {}, bool(cls.bases)  # an unreadable base: accept any key rather than refuse a valid one
    params = _function_params(init, ns, skip_first=True)
    is_open = False
    if init.args.kwarg is not None:  # **common: the keywords forwarded to the base class
        bases = _base_classes(module, cls)
        if not bases:
            return params, True
        for base_module, base in bases:
            inherited, base_open = _class_signature(base_module, base)
            for name, p in inherited.items():
                params.setdefault(name, p)
            is_open = is_open or base_open
    return params, is_open


@lru_cache(maxsize=None)
def signature_of(target: str) -> Signature:
    """The schema of a `_target_`: its class's constructor parameters (or a dataclass's fields), or a
    function's parameters. Raises ConfigError when the target cannot be found in the source."""
    module, _, name = target.rpartition(".")
    found = _find_class(module, name)
    if found is not None:
        params, is_open = _class_signature(*found)
        return Signature(target, params, is_open)
    tree = _module_ast(module)
    fn = next((n for n in (tree.body if tree else []) if isinstance(n, ast.FunctionDef) and n.name == name), None)
    if fn is None:
        raise ConfigError(f"_target_: {target} names no class or function in the source of {module}; "
                          "check the module path and the class name")
    return Signature(target, _function_params(fn, _Namespace(module, tree), skip_first=False),
                     fn.args.kwarg is not None)


def clear_cache() -> None:
    """Forget every parsed signature (tests that write modules)."""
    signature_of.cache_clear()
    module_file.cache_clear()
    _parse.cache_clear()
