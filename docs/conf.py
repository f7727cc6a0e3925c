"""Sphinx configuration of skreptile's documentation.

Build with ``make -C docs html`` (warnings are errors) or
``python -m sphinx -W --keep-going -b html docs docs/_build/html``.

Three things here are specific to this project:

* The API reference (``api.rst``) is generated at every build from
  ``skreptile.__all__`` and the ``__all__`` of every public submodule (a
  module without one contributes the public names it defines), with the
  template ``_templates/api.rst.jinja``: a new public name or submodule appears
  in the reference without editing the docs.  Its docstrings are validated by
  numpydoc, and every cross-reference must resolve (``nitpicky``).
* Markdown pages in ``docs/`` that no toctree names (guides added later, such
  as ``real_data.md``) are listed in the user guide automatically.
* Offline by default: the intersphinx inventories are read from
  ``_inventories/`` (see ``tools/make_inventories.py``; set
  ``SKREPTILE_DOCS_ONLINE=1`` to fetch the published ones), and MathJax is
  copied into the built site (``sphinx-mathjax-offline``), so neither the build
  nor the pages need a network.
* Every example of the gallery runs at every build, in its quick mode
  (``--quick``); ``SKREPTILE_DOCS_FULL=1`` runs the full examples instead.
"""

import inspect
import os
import pkgutil
import re
import sys
import warnings
from pathlib import Path

import jinja2

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # document the package of this checkout

import skreptile  # noqa: E402

# -- Project -----------------------------------------------------------------
project = "skreptile"
author = "The skreptile developers"
copyright = "2026, The skreptile developers"
release = skreptile.__version__
version = re.match(r"\d+\.\d+", release).group(0)

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax served with the pages, not from a CDN
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "tools", "_inventories", "**.ipynb_checkpoints"]
# Every cross-reference must resolve: a renamed function breaks the build.
nitpicky = True
default_role = "literal"
pygments_style = "sphinx"

# -- HTML --------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"skreptile {release}"
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    # No "On this page" column beside the examples: their code needs the width.
    "secondary_sidebar_items": {
        "*": ["page-toc"],
        "user_guide/*": ["page-toc"],
        "gen_modules/*": ["page-toc"],
        "auto_examples/*": [],
    },
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
}
html_sidebars = {"changelog": [], "api": []}
html_show_sourcelink = False
html_static_path = ["_static"]
html_css_files = ["skreptile.css"]  # code and output wrap instead of being clipped

# -- autodoc, autosummary, numpydoc ------------------------------------------
autosummary_generate = True
autodoc_typehints = "none"
numpydoc_show_class_members = False  # the class template lists members itself
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = True
numpydoc_xref_ignore = "all"  # only the types below become links
numpydoc_xref_aliases = {
    "ndarray": "numpy.ndarray",
    "Generator": "numpy.random.Generator",
    "numpy.random.Generator": "numpy.random.Generator",
    "RandomState": "numpy.random.RandomState",
    "torch.device": "torch.device",
    "torch.nn.Module": "torch.nn.Module",
    "Pipeline": "sklearn.pipeline.Pipeline",
    "sklearn.pipeline.Pipeline": "sklearn.pipeline.Pipeline",
    "TaskSampler": "skreptile.TaskSampler",
    "callable": ":term:`python:callable`",
}
# Docstrings are checked at every build; these checks are not required.
numpydoc_validation_checks = {
    "all",
    "ES01",  # extended summary
    "SA01",  # See Also section
    "EX01",  # Examples section
    "GL01",  # summary on the line after the opening quotes
    "RT02",  # a named return value (``self : object``) is fine
}

# -- intersphinx -------------------------------------------------------------
# The inventories shipped in _inventories/ by default, so the build is quiet and
# identical offline; SKREPTILE_DOCS_ONLINE=1 tries the published ones first.
_OFFLINE = not os.environ.get("SKREPTILE_DOCS_ONLINE")
_PROJECTS = {
    "python": "https://docs.python.org/3/",
    "numpy": "https://numpy.org/doc/stable/",
    "sklearn": "https://scikit-learn.org/stable/",
    "torch": "https://docs.pytorch.org/docs/stable/",
    "joblib": "https://joblib.readthedocs.io/en/stable/",
}
intersphinx_mapping = {}
for _key, _url in _PROJECTS.items():
    _shipped = str(HERE / "_inventories" / f"{_key}.inv")
    intersphinx_mapping[_key] = (_url, (_shipped,) if _OFFLINE else (None, _shipped))
intersphinx_timeout = 5

# -- MyST (the markdown pages) -------------------------------------------------
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# -- sphinx-gallery ----------------------------------------------------------
# Every example runs at every build, with ``--quick`` (a short run: a few
# minutes for the whole gallery on two CPU cores); SKREPTILE_DOCS_FULL=1 runs
# them in full.  Examples reading a data set fall back to synthetic data, and
# say so, when the data are absent.  SKREPTILE_GALLERY_PATTERN (a regular
# expression on the example's path) restricts which examples run.
_pattern = os.environ.get("SKREPTILE_GALLERY_PATTERN") or r"/plot_[^/]*\.py$"
sys.path.insert(0, str(HERE / "tools"))  # gallery_arguments: --quick unless SKREPTILE_DOCS_FULL

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": _pattern,
    "ignore_pattern": r"(__init__|conftest)\.py",
    "backreferences_dir": "gen_modules/backreferences",
    "doc_module": ("skreptile",),
    "remove_config_comments": True,
    "image_scrapers": ("matplotlib",),
    "matplotlib_animations": False,
    "min_reported_time": 1,
    "show_memory": False,
    "download_all_examples": False,
    "reset_argv": "gallery_arguments.example_arguments",
    # No execution-times pages: sphinx-gallery loads their table scripts from CDNs, which
    # would break the offline site.  .ci/run prints every example's running time instead.
    "write_computation_times": False,
}
# The "?" of the estimators' HTML display links to the API pages of this build.
os.environ["SKREPTILE_DOCS_URL"] = "../"

# Examples run in this process: no interactive backend, and no warnings from
# matplotlib's font cache rebuilding into the captured output.
os.environ.setdefault("MPLBACKEND", "Agg")
warnings.filterwarnings("ignore", message="Matplotlib is currently using agg")


# -- The generated API reference ----------------------------------------------
def _public_modules():
    """``skreptile`` and its public submodules (no component starting with "_")."""
    names = ["skreptile"]
    for info in pkgutil.walk_packages(skreptile.__path__, "skreptile."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def _public_names(module):
    """``module.__all__``, else the public names defined in the module itself."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == module.__name__
    ]


def _kind(obj):
    from sklearn.base import BaseEstimator

    from skreptile.tasks import TaskSampler

    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            return "exceptions"
        if issubclass(obj, BaseEstimator):
            return "estimators"
        if issubclass(obj, TaskSampler):
            return "samplers"
        return "classes"
    if callable(obj):
        return "functions"
    return None


_SECTION_TITLES = {
    "estimators": "Estimators",
    "samplers": "Task samplers",
    "classes": "Classes",
    "functions": "Functions",
    "exceptions": "Exceptions and warnings",
}
# Estimators and samplers show their inherited methods (get_params, score,
# sample_batch, ...); other classes (a torch.nn.Module, say) only their own.
_TEMPLATES = {
    "estimators": "class.rst",
    "samplers": "class.rst",
    "classes": "class_own_members.rst",
    "functions": "function.rst",
    "exceptions": "exception.rst",
}


def _api_context():
    """Module by module, the public names grouped by kind, each documented once."""
    import importlib

    documented = {}  # id(obj) -> where it is documented
    modules = []
    for mod_name in _public_modules():
        module = importlib.import_module(mod_name)
        sections = {kind: [] for kind in _SECTION_TITLES}
        elsewhere = []
        for name in _public_names(module):
            if name.startswith("__"):
                continue  # __version__
            obj = getattr(module, name)
            kind = _kind(obj)
            if kind is None:
                continue
            if id(obj) in documented:
                elsewhere.append((name, documented[id(obj)], kind))
                continue
            documented[id(obj)] = f"{mod_name}.{name}"
            sections[kind].append(name)
        summary = (inspect.getdoc(module) or "").split("\n\n")[0].replace("\n", " ")
        modules.append(
            {
                "name": mod_name,
                "summary": summary,
                "sections": [
                    (_SECTION_TITLES[kind], _TEMPLATES[kind], sorted(names))
                    for kind, names in sections.items()
                    if names
                ],
                "elsewhere": elsewhere,
            }
        )
    return {"modules": modules}


def _write_if_changed(path, text):
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def _render(template_name, **context):
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE / "_templates")),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template(template_name).render(**context)


def _remove_stale_stubs(context):
    """Delete autosummary pages of names no longer public (autosummary keeps them)."""
    current = {
        f"{module['name']}.{name}"
        for module in context["modules"]
        for _, _, names in module["sections"]
        for name in names
    }
    for stub in (HERE / "gen_modules").glob("*.rst"):
        if stub.stem not in current:
            stub.unlink()


# Written now, before autosummary looks for the names to generate pages for.
_API = _api_context()
_remove_stale_stubs(_API)
_write_if_changed(HERE / "api.rst", _render("api.rst.jinja", **_API))


# -- Markdown guides that no toctree names yet ---------------------------------
# Pages written in markdown by the features they document (``real_data.md``,
# ``classification.md``, ...) join the user guide as soon as they exist.
PLACED_MARKDOWN = {"benchmarks", "changelog", "user_guide_sklearn"}
EXTRA_GUIDES = sorted(p.stem for p in HERE.glob("*.md") if p.stem not in PLACED_MARKDOWN)


def _render_jinja_pages(app, docname, source):
    """Render ``{{ ... }}`` and ``{% ... %}`` in the pages that use them."""
    if docname == "user_guide/index":
        source[0] = jinja2.Template(source[0], trim_blocks=True, lstrip_blocks=True).render(
            extra_guides=EXTRA_GUIDES
        )


def _skip_foreign_members(app, what, name, obj, skip, options):
    """Document skreptile's own methods; point to scikit-learn for the inherited ones."""
    if skip or what != "class":
        return None
    if re.fullmatch(r"set_\w+_request|get_metadata_routing", name):
        return True
    return None


def _jinja_pages_are_outdated(app, env, added, changed, removed):
    """Read the user guide's index at every build: the markdown pages may have changed."""
    return ["user_guide/index"]


def setup(app):
    app.connect("env-get-outdated", _jinja_pages_are_outdated)
    app.connect("source-read", _render_jinja_pages)
    app.connect("autodoc-skip-member", _skip_foreign_members)
