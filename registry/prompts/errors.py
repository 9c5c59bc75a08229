"""Errors of the prompts domain, shared by the write service and the read catalog."""

from __future__ import annotations

from prompt_registry_client.templating import RenderError, TemplateProblemError, VariablesInvalidError

from registry.lib.errors import FieldError, InvalidInputError, NotFoundError
from registry.lib.versioned import ResourceErrors


class PromptNotFoundError(NotFoundError):
    """No prompt has this name."""

    type = "prompt_not_found"
    title = "Prompt not found"


class PromptVersionNotFoundError(NotFoundError):
    """The prompt has no version with this number."""

    type = "prompt_version_not_found"
    title = "Prompt version not found"


PROMPT_ERRORS = ResourceErrors(PromptNotFoundError, PromptVersionNotFoundError, "prompt")


class TemplateInvalidError(InvalidInputError):
    """A template does not compile, nests too deeply, uses a construct the sandbox refuses at every render,
    or the input schema is outside the supported subset. Each error names the template, line and construct."""

    type = "template_invalid"
    title = "Template invalid"

    @classmethod
    def of(cls, exc: TemplateProblemError) -> TemplateInvalidError:
        errors = [FieldError(p.location, f"line {p.line}: {p.message}" if p.line else p.message) for p in exc.problems]
        return cls("the prompt does not compile", errors=errors)


class VariablesInvalidHttpError(InvalidInputError):
    """The variables do not match the prompt's input schema; ``errors`` lists every problem."""

    type = "variables_invalid"
    title = "Variables invalid"

    @classmethod
    def of(cls, exc: VariablesInvalidError) -> VariablesInvalidHttpError:
        errors = [
            FieldError(f"variables.{p.field}" if p.field != "variables" else "variables", p.message)
            for p in exc.problems
        ]
        return cls(exc.detail, errors=errors)


class RenderFailedError(InvalidInputError):
    """The template failed while rendering: an unsafe operation, a runtime error or a limit."""

    type = "render_failed"
    title = "Render failed"

    @classmethod
    def of(cls, exc: RenderError) -> RenderFailedError:
        return cls(str(exc), reason=exc.reason)
