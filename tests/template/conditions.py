"""template.yaml as CloudFormation would see it for given parameter values: its Conditions
evaluated, every Fn::If replaced by the branch taken, AWS::NoValue dropped, resources (and
outputs) whose Condition is false removed. Offline, no AWS call.

Used by test_template.py (the KMS, VPC, topic and e-mail wiring under each set of parameters)
and by checkov_variants.py (Checkov does not look inside a conditional policy or resource, so
`make checkov` also scans the template resolved with every option switched on).

Only what template.yaml uses is implemented: Fn::Equals, Fn::Not, Fn::And, Fn::Or, Condition,
Fn::Join and Ref of parameters inside conditions; Fn::Contains, Fn::And, Fn::Or, Fn::Not and
Ref in Rules assertions. Anything else raises, so a new construct cannot be silently misread.
"""

from __future__ import annotations

import copy
from typing import Any

NO_VALUE = {"Ref": "AWS::NoValue"}


def parameter_values(t: dict, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each parameter's value: the override, else its Default. A CommaDelimitedList is a list
    (CloudFormation splits "" into [""])."""
    overrides = overrides or {}
    unknown = set(overrides) - set(t.get("Parameters", {}))
    if unknown:
        raise KeyError(f"no such parameters: {sorted(unknown)}")
    values = {}
    for name, p in t.get("Parameters", {}).items():
        v = overrides.get(name, p.get("Default"))
        if v is None:
            continue  # no default (ApiBaseUrl): only Ref'd as a value, never in a condition
        if p.get("Type") == "CommaDelimitedList" and isinstance(v, str):
            v = v.split(",")
        values[name] = v
    return values


def _value(x, values: dict):
    if isinstance(x, (str, int, float, bool)):
        return x
    if isinstance(x, list):
        return [_value(i, values) for i in x]
    if isinstance(x, dict) and len(x) == 1:
        (fn, arg), = x.items()
        if fn == "Ref":
            if arg not in values:
                raise KeyError(f"Ref {arg} has no value here")
            return values[arg]
        if fn == "Fn::Join":
            sep, items = arg
            items = _value(items, values)
            return sep.join(str(i) for i in items)
    raise ValueError(f"unsupported in a condition: {x!r}")


def evaluate(cond, conditions: dict, values: dict, memo: dict | None = None) -> bool:
    """The truth of a condition expression (Conditions section or Rules assertion)."""
    memo = {} if memo is None else memo
    if not (isinstance(cond, dict) and len(cond) == 1):
        raise ValueError(f"not a condition: {cond!r}")
    (fn, arg), = cond.items()
    if fn == "Condition":
        if arg not in memo:
            memo[arg] = evaluate(conditions[arg], conditions, values, memo)
        return memo[arg]
    if fn == "Fn::Equals":
        a, b = (_value(v, values) for v in arg)
        return str(a) == str(b) if not isinstance(a, list) and not isinstance(b, list) else a == b
    if fn == "Fn::Not":
        return not evaluate(arg[0], conditions, values, memo)
    if fn == "Fn::And":
        return all(evaluate(c, conditions, values, memo) for c in arg)
    if fn == "Fn::Or":
        return any(evaluate(c, conditions, values, memo) for c in arg)
    if fn == "Fn::Contains":
        items, item = (_value(v, values) for v in arg)
        return item in items
    raise ValueError(f"unsupported condition function {fn}")


def condition_values(t: dict, overrides: dict[str, Any] | None = None) -> dict[str, bool]:
    values = parameter_values(t, overrides)
    conditions = t.get("Conditions", {})
    memo: dict = {}
    return {name: evaluate({"Condition": name}, conditions, values, memo) for name in conditions}


def rules_hold(t: dict, overrides: dict[str, Any] | None = None) -> dict[str, bool]:
    """Each rule's verdict (all its assertions true) for these parameter values."""
    values = parameter_values(t, overrides)
    out = {}
    for name, rule in t.get("Rules", {}).items():
        if "RuleCondition" in rule and not evaluate(rule["RuleCondition"], {}, values):
            out[name] = True
            continue
        out[name] = all(evaluate(a["Assert"], {}, values) for a in rule["Assertions"])
    return out


def _walk(x, truth: dict[str, bool]):
    if isinstance(x, dict):
        if len(x) == 1 and "Fn::If" in x:
            name, yes, no = x["Fn::If"]
            return _walk(yes if truth[name] else no, truth)
        out = {}
        for k, v in x.items():
            v = _walk(v, truth)
            if v != NO_VALUE:
                out[k] = v
        return out
    if isinstance(x, list):
        return [w for w in (_walk(i, truth) for i in x) if w != NO_VALUE]
    return x


def resolve(t: dict, overrides: dict[str, Any] | None = None) -> dict:
    """A copy of template t as deployed with these parameter values (others: defaults)."""
    truth = condition_values(t, overrides)
    t = copy.deepcopy(t)
    for section in ("Resources", "Outputs"):
        for name in [n for n, r in t.get(section, {}).items() if "Condition" in r and not truth[r["Condition"]]]:
            del t[section][name]
    for section in ("Resources", "Outputs"):
        t[section] = {k: _walk(v, truth) for k, v in t.get(section, {}).items()}
    return t
