#!/usr/bin/env python3
"""Validates RaftCluster manifests against the CRD's openAPIV3Schema with a JSON Schema validator.

    validate-crd-manifests.py CRD.yaml --valid FILE... --invalid FILE...

Every document of kind RaftCluster in a --valid file must validate. Every --invalid file holds
one RaftCluster and says in a comment how the API server rejects it:

    # rejected-by: schema      the structural schema (types, enums, minimum/maximum, patterns,
                               required, unknown fields): this script must reject it, and
    # error: TEXT              a JSON Schema error message must contain TEXT;
    # rejected-by: cel         an x-kubernetes-validations (CEL) rule: the structural schema
                               must accept it (so it is the CEL rule that catches it), and
                               evaluating the CRD's rules with cel-python (crd_cel.py) must
                               find a rule that returns false; with
    # error: TEXT              that rule's message must contain TEXT.

Valid examples must also pass every CEL rule that could be evaluated. The kind suite sends
every invalid manifest to a real API server as well (kubectl apply --dry-run=server).

The schema is read the way the API server reads it: `nullable` allows null, and an object with
`properties` and neither `additionalProperties` nor `x-kubernetes-preserve-unknown-fields`
rejects unknown fields (the server prunes them, or with kubectl's default strict field
validation rejects them).
"""
import argparse
import copy
import re
import sys

import jsonschema
import yaml

import crd_cel


def to_json_schema(node):
    """OpenAPI v3 (Kubernetes structural schema) -> JSON Schema draft 7."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key.startswith("x-kubernetes-") or key in ("nullable", "format"):
            continue  # handled below, or not a JSON Schema keyword (format "quantity" etc.)
        else:
            out[key] = to_json_schema(value)
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else out["type"] + ["null"]
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def cel_summary(skipped):
    if not skipped:
        return "every rule evaluated"
    return f"{len(skipped)} rule(s) not evaluated: " + "; ".join(
        f"{where or '<root>'} {reason.split(':')[0]}" for where, _, reason in skipped
    )


def load_crd(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    if len(crds) != 1:
        sys.exit(f"{path}: expected one CustomResourceDefinition, found {len(crds)}")
    crd = crds[0]
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    schemas = {}
    for version in crd["spec"]["versions"]:
        raw = version["schema"]["openAPIV3Schema"]
        schema = to_json_schema(copy.deepcopy(raw))
        # metadata is the API server's to validate; the CRD schema says only "object".
        schema.setdefault("properties", {})["metadata"] = {"type": "object"}
        schema["properties"]["apiVersion"] = {"const": f"{group}/{version['name']}"}
        schema["properties"]["kind"] = {"const": kind}
        schema.setdefault("required", [])
        schema["required"] = sorted(set(schema["required"]) | {"apiVersion", "kind", "metadata"})
        jsonschema.Draft7Validator.check_schema(schema)
        schemas[f"{group}/{version['name']}"] = (schema, raw)
    return kind, schemas


def errors_of(schemas, doc):
    entry = schemas.get(doc.get("apiVersion"))
    if entry is None:
        return [f"apiVersion {doc.get('apiVersion')!r} is not served by the CRD ({', '.join(schemas)})"]
    validator = jsonschema.Draft7Validator(entry[0])
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("crd")
    parser.add_argument("--valid", nargs="*", default=[])
    parser.add_argument("--invalid", nargs="*", default=[])
    args = parser.parse_args()

    kind, schemas = load_crd(args.crd)
    failures = 0
    checked = 0
    for path in args.valid:
        docs = [d for d in yaml.safe_load_all(open(path)) if d and d.get("kind") == kind]
        if not docs:
            print(f"FAIL {path}: no {kind} in it")
            failures += 1
        for doc in docs:
            checked += 1
            errs = errors_of(schemas, doc)
            name = f"{path} ({doc.get('metadata', {}).get('name')})"
            if errs:
                failures += 1
                print(f"FAIL {name} is rejected by the schema:")
                for e in errs:
                    print(f"       {e}")
            else:
                violations, skipped = crd_cel.check(schemas[doc["apiVersion"]][1], doc)
                if violations:
                    failures += 1
                    print(f"FAIL {name} is rejected by a CEL rule:")
                    for where, rule, message in violations:
                        print(f"       {where or '<root>'}: {message} ({rule})")
                else:
                    print(f"ok   {name} validates (schema, and CEL: {cel_summary(skipped)})")

    for path in args.invalid:
        text = open(path).read()
        by = re.search(r"^# rejected-by: (schema|cel)\s*$", text, re.M)
        expected = re.findall(r"^# error: (.+?)\s*$", text, re.M)
        docs = [d for d in yaml.safe_load_all(text) if d]
        if not by or len(docs) != 1:
            print(f"FAIL {path}: needs one document and a '# rejected-by: schema|cel' line")
            failures += 1
            continue
        checked += 1
        errs = errors_of(schemas, docs[0])
        if by.group(1) == "schema":
            missing = [x for x in expected if not any(x in e for e in errs)]
            if not errs:
                print(f"FAIL {path}: accepted by the schema, expected a rejection")
                failures += 1
            elif not expected or missing:
                print(f"FAIL {path}: rejected, but no error contains {missing or '(no # error: line)'}; errors:")
                for e in errs:
                    print(f"       {e}")
                failures += 1
            else:
                print(f"ok   {path} rejected by the schema: {errs[0]}")
        else:
            if errs:
                print(f"FAIL {path}: marked as caught by CEL but the structural schema already rejects it:")
                for e in errs:
                    print(f"       {e}")
                failures += 1
                continue
            violations, skipped = crd_cel.check(schemas[docs[0]["apiVersion"]][1], docs[0])
            messages = [f"{where or '<root>'}: {message}" for where, _, message in violations]
            missing = [x for x in expected if not any(x in m for m in messages)]
            if not violations:
                print(f"FAIL {path}: no CEL rule rejects it ({cel_summary(skipped)})")
                for where, rule, reason in skipped:
                    print(f"       {where or '<root>'}: {rule}: {reason}")
                failures += 1
            elif not expected or missing:
                print(f"FAIL {path}: rejected by CEL, but no message contains {missing or '(no # error: line)'}:")
                for m in messages:
                    print(f"       {m}")
                failures += 1
            else:
                print(f"ok   {path} passes the structural schema, rejected by CEL: {messages[0]}")

    print(f"{checked} manifests checked, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
