"""Evaluates a CRD's CEL validation rules (x-kubernetes-validations) on a manifest, the way
the API server does on create: schema defaults are applied first, then every rule is run on
the value at its place in the schema. Transition rules (those reading oldSelf) only run on
update and are skipped. Kubernetes' quantity library (isQuantity, quantity, compareTo,
isGreaterThan, isLessThan, asInteger) is provided; a rule that needs anything else that
cel-python lacks is reported as not evaluated, never as passed.
"""
import copy
import re
from fractions import Fraction

import celpy
from celpy import celtypes

_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": 1,
            "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def parse_quantity(text):
    """The value of a Kubernetes quantity string, or None when it is not one."""
    m = _QUANTITY.match(str(text))
    if not m:
        return None
    number, suffix = Fraction(m.group(1)), m.group(2) or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    return number * Fraction(10) ** int(suffix[1:])


class Quantity:
    def __init__(self, value):
        self.value = value


def _quantity(text):
    value = parse_quantity(text)
    if value is None:
        raise ValueError(f"quantities must match the regular expression: {text!r}")
    return Quantity(value)


def _compare(a, b):
    return celtypes.IntType((a.value > b.value) - (a.value < b.value))


FUNCTIONS = {
    "isQuantity": lambda s: celtypes.BoolType(parse_quantity(s) is not None),
    "quantity": _quantity,
    "compareTo": _compare,
    "isGreaterThan": lambda a, b: celtypes.BoolType(a.value > b.value),
    "isLessThan": lambda a, b: celtypes.BoolType(a.value < b.value),
    "asInteger": lambda a: celtypes.IntType(int(a.value)),
}


def _apply_defaults(schema, value):
    if isinstance(value, dict) and schema.get("type") == "object":
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                _apply_defaults(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, item in value.items():
                if name not in schema.get("properties", {}):
                    _apply_defaults(extra, item)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _apply_defaults(schema["items"], item)


def _walk(schema, value, path, visit):
    if isinstance(value, dict) and schema.get("type") == "object":
        for name, sub in schema.get("properties", {}).items():
            if name in value and value[name] is not None:
                _walk(sub, value[name], f"{path}.{name}", visit)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, item in value.items():
                if name not in schema.get("properties", {}):
                    _walk(extra, item, f"{path}[{name}]", visit)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _walk(schema["items"], item, f"{path}[{i}]", visit)
    for rule in schema.get("x-kubernetes-validations", []):
        visit(path, rule, value)


def check(schema, document):
    """(violations, skipped): the rules that returned false, as (path, rule, message), and
    the rules not evaluated, as (path, rule, reason)."""
    doc = copy.deepcopy(document)
    _apply_defaults(schema, doc)
    env = celpy.Environment()
    violations, skipped = [], []

    def visit(path, rule, value):
        text = rule["rule"]
        if re.search(r"\boldSelf\b", text):
            skipped.append((path, text, "transition rule: runs only on update"))
            return
        try:
            program = env.program(env.compile(text), functions=FUNCTIONS)
            result = program.evaluate({"self": celpy.json_to_cel(value)})
        except Exception as e:  # noqa: BLE001 - any failure means "not evaluated"
            skipped.append((path, text, f"not evaluated: {type(e).__name__}: {e}"))
            return
        if isinstance(result, celtypes.BoolType):
            if not result:
                violations.append((path, text, rule.get("message") or f"failed rule: {text}"))
        else:
            # cel-python returns errors as values (CELEvalError) instead of raising.
            skipped.append((path, text, f"not evaluated: {result!r}"))

    _walk(schema, doc, "", visit)
    return violations, skipped
