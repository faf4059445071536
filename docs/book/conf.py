"""Sphinx configuration of the course book (``make book``; built by docs/book/build.py, which assembles the
sources — README.md, docs/*.md, notebooks/*.ipynb — next to this file in a build folder).

Sphinx + MyST-NB: MyST-NB executes every notebook with its CPU defaults (one kernel per notebook, in its own folder)
and stores the outputs and figures in the pages; math is typeset in the browser by a *local* copy of MathJax 2
(the ``jupyter-server-mathjax`` wheel, HTML-CSS output with its STIX-Web fonts), so the site works offline.  docs/teaching.md says
why this tool.
"""
project = "dpmsched: few-step sampling schedules for diffusion models"
author = "the dpmsched authors"
copyright = "the dpmsched authors"

extensions = ["myst_nb", "sphinx.ext.mathjax"]
root_doc = "index"
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "runs"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}

# MyST: $...$ and $$...$$ math as in docs/math.md and the notebooks; headings get anchors for the cross-links
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_dmath_double_inline = True
myst_heading_anchors = 3
myst_update_mathjax = False          # MyST's own MathJax setting is for MathJax 3; mathjax2_config below does it
suppress_warnings = ["myst.xref_missing", "myst.header", "misc.highlighting_failure"]

# MyST-NB: run every notebook (the stored ones have no outputs), fail the build on an error, at most 10 min per cell
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
nb_output_stderr = "remove"          # library chatter (e.g. diffusers on a missing accelerate) stays out of the pages

# MathJax 2 from _static/mathjax (copied there by build.py): the combined TeX + HTML-CSS configuration with the
# STIX-Web fonts that the wheel ships, so that no font or script is fetched from the network
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"
mathjax2_config = {
    "tex2jax": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]], "processRefs": False,
                "processEnvironments": False, "processClass": "math|output_area|tex2jax_process"},
    "TeX": {"extensions": ["AMSmath.js", "AMSsymbols.js"]},
    "HTML-CSS": {"availableFonts": [], "preferredFont": None, "webFont": "STIX-Web", "imageFont": None},
    "showMathMenu": False,
    "messageStyle": "none",
}
# the schedule explorer of notebook 01 needs a live kernel: no widget manager from a CDN, the page shows its text
nb_ipywidgets_js = {}

html_theme = "furo"
html_title = "dpmsched course"
html_static_path = ["_static"]
html_last_updated_fmt = None
html_show_sourcelink = False
