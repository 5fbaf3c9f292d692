"""credit-check: a plughost plug-in in Python (componentize-py).

PreOperation Create or Update of `account`: refuses a credit limit above the
step's configuration (default 1000000) and writes who checked it into
`description`. Build with `example-plugins/python/build.sh`.
"""

from decimal import Decimal, InvalidOperation

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import tracing
from wit_world.imports.types import (
    Attribute,
    ExecutionContext,
    ExecutionResult,
    Parameter,
    ParameterValue_Entity,
    PluginError_Permanent,
    Value_Money,
    Value_Text,
)


def fail(message: str) -> None:
    raise Err(PluginError_Permanent(message))


class Handler(exports.Handler):
    def execute(self, context: ExecutionContext) -> ExecutionResult:
        target = next((p.value.value for p in context.input_parameters
                       if p.name == "Target" and isinstance(p.value, ParameterValue_Entity)), None)
        if target is None:
            fail("expected a Target record")
        try:
            maximum = Decimal(context.configuration or "1000000")
        except InvalidOperation:
            fail(f"the step's configuration {context.configuration!r} is not a number")
        limit = next((a.value.value for a in target.attributes
                      if a.name == "creditlimit" and isinstance(a.value, Value_Money)), None)
        if limit is not None and Decimal(limit) > maximum:
            fail(f"The credit limit {limit} is above the maximum of {maximum}")
        tracing.trace(f"credit limit {limit} checked against {maximum}")
        target.attributes = [a for a in target.attributes if a.name != "description"]
        target.attributes.append(Attribute("description", Value_Text(f"credit checked (max {maximum}) in Python")))
        return ExecutionResult(
            input_parameters=[Parameter("Target", ParameterValue_Entity(target))],
            output_parameters=[],
            shared_variables=[],
        )
