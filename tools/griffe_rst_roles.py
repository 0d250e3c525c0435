"""Griffe extension for the docs site (mkdocs.yml): reST roles in the docstrings shown as code.

The docstrings are numpy style with Sphinx cross-reference roles (:func:`load_model`,
:class:`~melgenre.errors.MelgenreError`) and ``text::`` literal-block markers, which Markdown would
print as they are. This turns each role into inline code (``~a.b.C`` as ``C``, as Sphinx shows it)
and ``text::`` into ``text:``. Nothing in the package imports it.
"""

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|data|attr|meth|exc|obj|const):`(~?)([^`]+)`")
LITERAL_MARKER = re.compile(r"(?<=\S)::$", re.M)


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class RstRoles(griffe.Extension):
    """Rewrite every object's docstring before it is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            text = ROLE.sub(_role, obj.docstring.value)
            obj.docstring.value = LITERAL_MARKER.sub(":", text)
