"""A griffe extension for the API pages: reST roles in Ember's docstrings (``:class:`X```,
``:func:`~a.b```) become Markdown code spans, as the text around them already is."""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`~?([^`]+)`")


class RstRoles(griffe.Extension):
    """Rewrite ``:role:`target``` as a code span in every docstring griffe loads."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        """Called by griffe for each loaded object (module, class, function, attribute)."""
        doc = getattr(obj, "docstring", None)
        if doc is not None and ":" in doc.value:
            doc.value = _ROLE.sub(lambda m: f"`{m.group(1)}`", doc.value)
