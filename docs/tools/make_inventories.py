"""Write the intersphinx inventories shipped in ``docs/_inventories/``.

The documentation links to scikit-learn, NumPy, PyTorch, joblib and Python
through intersphinx.  ``conf.py`` first tries each project's published
``objects.inv``; where the build has no internet access (as on this project's
machines and CI) it falls back to the inventories in ``docs/_inventories/``,
so the build is the same, warning-free, online and offline.

Those fallback inventories cannot be downloaded here, so this script writes
them from the installed packages: it lists their public objects by
introspection and maps each to the page where the project's documentation
describes it (the URL patterns of their API references).  Only Python-domain
objects are listed (classes, functions, methods, modules), which is all that
skreptile's docs and docstrings link to.

Run it again after upgrading one of the packages, from the repository root::

    python docs/tools/make_inventories.py
"""

import importlib
import importlib.util
import inspect
import sys
import zlib
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "_inventories"


def write_inventory(path, project, version, entries):
    """Write ``entries`` as a version-2 Sphinx inventory.

    Each entry is ``(name, role, uri)`` or ``(name, role, uri, display_name)``.
    """
    lines = []
    for entry in sorted(set(entries)):
        name, role, uri, display = (*entry, "-") if len(entry) == 3 else entry
        if uri.endswith("#" + name):
            uri = uri[: -len(name)] + "$"
        priority = -1 if role == "std:label" else 1
        lines.append(f"{name} {role} {priority} {uri} {display}\n")
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    body = zlib.compress("".join(lines).encode("utf-8"), 9)
    path.write_bytes(header.encode("utf-8") + body)
    print(f"{path.relative_to(OUT.parent.parent)}: {len(lines)} objects ({project} {version})")


def _public_methods(cls):
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if inspect.isfunction(member) or isinstance(member, (classmethod, staticmethod)):
            yield name, "py:method"
        elif isinstance(member, property):
            yield name, "py:property"


def _names(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            n
            for n, obj in vars(module).items()
            if not n.startswith("_") and getattr(obj, "__module__", None) == module.__name__
        ]
    return names


def sklearn_entries():
    import sklearn

    modules = ["base", "utils", "utils.validation", "utils.multiclass", "utils.metadata_routing"]
    modules += [m for m in sklearn.__all__ if m not in ("externals", "experimental", "clone")]
    modules = [m for m in modules if importlib.util.find_spec(f"sklearn.{m}") is not None]
    entries = [("sklearn", "py:module", "api/index.html")]
    # Labels that the docstrings of inherited estimator methods (``score``) refer to.
    guide = "modules/model_evaluation.html"
    entries += [
        (
            "r2_score",
            "std:label",
            f"{guide}#r2-score",
            "R² score, the coefficient of determination",
        ),
        ("accuracy_score", "std:label", f"{guide}#accuracy-score", "Accuracy score"),
        (
            "metadata_routing",
            "std:label",
            "metadata_routing.html#metadata-routing",
            "Metadata Routing",
        ),
    ]
    for mod_name in modules:
        full = f"sklearn.{mod_name}"
        module = importlib.import_module(full)
        entries.append((full, "py:module", f"api/{full}.html#module-{full}"))
        for name in _names(module):
            try:
                obj = getattr(module, name, None)
            except ImportError:  # experimental estimators need an explicit enable import
                continue
            if obj is None or inspect.ismodule(obj):
                continue
            if not str(getattr(obj, "__module__", "")).startswith("sklearn"):
                continue
            qual = f"{full}.{name}"
            page = f"modules/generated/{qual}.html"
            if inspect.isclass(obj):
                entries.append((qual, "py:class", f"{page}#{qual}"))
                for meth, role in _public_methods(obj):
                    entries.append((f"{qual}.{meth}", role, f"{page}#{qual}.{meth}"))
            elif callable(obj):
                entries.append((qual, "py:function", f"{page}#{qual}"))
    return sklearn.__version__, entries


def numpy_entries():
    import numpy as np

    entries = [
        ("numpy", "py:module", "reference/index.html#module-numpy"),
        ("numpy.ndarray", "py:class", "reference/generated/numpy.ndarray.html#numpy.ndarray"),
        ("numpy.dtype", "py:class", "reference/generated/numpy.dtype.html#numpy.dtype"),
        ("numpy.random", "py:module", "reference/random/index.html#module-numpy.random"),
    ]
    for name in np.__all__:
        obj = getattr(np, name, None)
        is_function = isinstance(obj, np.ufunc) or (
            callable(obj) and not inspect.isclass(obj) and not inspect.ismodule(obj)
        )
        if is_function:
            qual = f"numpy.{name}"
            entries.append((qual, "py:function", f"reference/generated/{qual}.html#{qual}"))
    for meth, _ in _public_methods(np.ndarray):
        qual = f"numpy.ndarray.{meth}"
        entries.append((qual, "py:method", f"reference/generated/{qual}.html#{qual}"))
    # What numpydoc's default type aliases link to (``array_like``, ``scalar``).
    entries += [
        ("array_like", "std:term", "glossary.html#term-array_like"),
        ("arrays.scalars", "std:label", "reference/arrays.scalars.html#arrays-scalars", "Scalars"),
        ("numpy.inf", "py:data", "reference/constants.html#numpy.inf"),
        ("numpy.nan", "py:data", "reference/constants.html#numpy.nan"),
    ]
    random = "reference/random"
    entries += [
        ("numpy.random.Generator", "py:class", f"{random}/generator.html#numpy.random.Generator"),
        (
            "numpy.random.default_rng",
            "py:function",
            f"{random}/generator.html#numpy.random.default_rng",
        ),
        ("numpy.random.RandomState", "py:class", f"{random}/legacy.html#numpy.random.RandomState"),
        (
            "numpy.random.SeedSequence",
            "py:class",
            f"{random}/bit_generators/generated/numpy.random.SeedSequence.html#numpy.random.SeedSequence",
        ),
    ]
    for meth in dir(np.random.Generator):
        if not meth.startswith("_"):
            qual = f"numpy.random.Generator.{meth}"
            entries.append((qual, "py:method", f"{random}/generated/{qual}.html#{qual}"))
    return np.__version__, entries


def torch_entries():
    import torch

    gen = "generated"
    entries = [
        ("torch", "py:module", "torch.html#module-torch"),
        ("torch.nn", "py:module", "nn.html#module-torch.nn"),
        ("torch.Tensor", "py:class", "tensors.html#torch.Tensor"),
        ("torch.device", "py:class", "tensor_attributes.html#torch.device"),
        ("torch.dtype", "py:class", "tensor_attributes.html#torch.dtype"),
        ("torch.Generator", "py:class", f"{gen}/torch.Generator.html#torch.Generator"),
        (
            "torch.cuda.is_available",
            "py:function",
            f"{gen}/torch.cuda.is_available.html#torch.cuda.is_available",
        ),
        (
            "torch.backends.mps.is_available",
            "py:function",
            "backends.html#torch.backends.mps.is_available",
        ),
        ("torch.save", "py:function", f"{gen}/torch.save.html#torch.save"),
        ("torch.load", "py:function", f"{gen}/torch.load.html#torch.load"),
    ]
    for name in torch.__all__:
        obj = getattr(torch, name, None)
        if inspect.isfunction(obj) or inspect.isbuiltin(obj):
            qual = f"torch.{name}"
            entries.append((qual, "py:function", f"{gen}/{qual}.html#{qual}"))
    for name in torch.nn.modules.__all__:
        qual = f"torch.nn.{name}"
        entries.append((qual, "py:class", f"{gen}/{qual}.html#{qual}"))
        for meth, role in _public_methods(getattr(torch.nn, name)):
            entries.append((f"{qual}.{meth}", role, f"{gen}/{qual}.html#{qual}.{meth}"))
    for name in ("SGD", "Adam", "AdamW"):
        qual = f"torch.optim.{name}"
        entries.append((qual, "py:class", f"{gen}/{qual}.html#{qual}"))
    return torch.__version__.split("+")[0], entries


def joblib_entries():
    import joblib

    entries = [("joblib", "py:module", "index.html#module-joblib")]
    for name in ("dump", "load", "hash", "Parallel", "delayed", "Memory", "parallel_config"):
        qual = f"joblib.{name}"
        role = "py:class" if inspect.isclass(getattr(joblib, name)) else "py:function"
        entries.append((qual, role, f"generated/{qual}.html#{qual}"))
    return joblib.__version__, entries


def python_entries():
    lib = "library"
    entries = [
        ("pickle", "py:module", f"{lib}/pickle.html#module-pickle"),
        ("pickle.load", "py:function", f"{lib}/pickle.html#pickle.load"),
        ("pickle.loads", "py:function", f"{lib}/pickle.html#pickle.loads"),
        ("pickle.dump", "py:function", f"{lib}/pickle.html#pickle.dump"),
        ("pickle.dumps", "py:function", f"{lib}/pickle.html#pickle.dumps"),
        ("copy.deepcopy", "py:function", f"{lib}/copy.html#copy.deepcopy"),
        ("functools.partial", "py:function", f"{lib}/functools.html#functools.partial"),
        ("UserWarning", "py:exception", f"{lib}/exceptions.html#UserWarning"),
        ("ValueError", "py:exception", f"{lib}/exceptions.html#ValueError"),
        ("TypeError", "py:exception", f"{lib}/exceptions.html#TypeError"),
        ("RuntimeWarning", "py:exception", f"{lib}/exceptions.html#RuntimeWarning"),
        ("FloatingPointError", "py:exception", f"{lib}/exceptions.html#FloatingPointError"),
        ("KeyboardInterrupt", "py:exception", f"{lib}/exceptions.html#KeyboardInterrupt"),
        ("NotImplementedError", "py:exception", f"{lib}/exceptions.html#NotImplementedError"),
        ("warnings.filterwarnings", "py:function", f"{lib}/warnings.html#warnings.filterwarnings"),
    ]
    # What numpydoc's default type aliases link to (``None``, ``bool``, ``sequence``).
    entries += [
        (const, "py:data", f"{lib}/constants.html#{const}") for const in ("None", "True", "False")
    ]
    entries += [
        (term, "std:term", f"glossary.html#term-{term}")
        for term in ("iterable", "sequence", "generator", "callable")
    ]
    entries += [
        (
            "bltin-boolean-values",
            "std:label",
            f"{lib}/stdtypes.html#bltin-boolean-values",
            "Boolean Type - bool",
        ),
        (
            "contextlib.contextmanager",
            "py:function",
            f"{lib}/contextlib.html#contextlib.contextmanager",
        ),
        ("collections.namedtuple", "py:function", f"{lib}/collections.html#collections.namedtuple"),
    ]
    for name in ("int", "float", "str", "bool", "tuple", "list", "dict", "callable"):
        entries.append(
            (
                name,
                "py:class" if name != "callable" else "py:function",
                f"{lib}/functions.html#{name}",
            )
        )
    return f"{sys.version_info.major}.{sys.version_info.minor}", entries


def main():
    OUT.mkdir(exist_ok=True)
    for key, project, make in [
        ("python", "Python", python_entries),
        ("numpy", "NumPy", numpy_entries),
        ("sklearn", "scikit-learn", sklearn_entries),
        ("torch", "PyTorch", torch_entries),
        ("joblib", "joblib", joblib_entries),
    ]:
        version, entries = make()
        write_inventory(OUT / f"{key}.inv", project, version, entries)


if __name__ == "__main__":
    main()
