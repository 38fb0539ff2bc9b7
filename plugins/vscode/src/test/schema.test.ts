/**
 * The wire types of client.ts against the daemon's own schema, docs/openapi.json (made from the
 * Rust types of src/api/, issue 25): every field the extension sends or reads must exist there,
 * under the same type name, with the same nested types and enum values; the `/v1/score` family
 * must also have every field the schema has (the client keeps up with the wire). Skipped, with a
 * message, while docs/openapi.json does not exist. `ENDORM_OPENAPI=FILE` checks against another file.
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import * as ts from "typescript";

const ROOT = path.resolve(__dirname, "..", "..");
/** `ENDORM_OPENAPI` points at another copy (to try the check on a changed schema). */
const OPENAPI = process.env.ENDORM_OPENAPI || path.resolve(ROOT, "..", "..", "docs", "openapi.json");
/** Exported interfaces of client.ts that are not wire bodies. */
const NOT_WIRE = new Set(["RequestOptions", "ClientOptions"]);
/** Request bodies: a field the schema requires must be required here too. */
const REQUESTS = new Set(["ScoreRequest", "Message"]);
/** Types that must carry every field of their schema. */
const CAUGHT_UP = new Set(["ScoreRequest", "ScoreResponse", "CandidateResult", "TokenDetail", "Usage", "Timings"]);

/** A property of a TypeScript interface: the interfaces and string literals its type names. */
interface TsField {
  name: string;
  optional: boolean;
  refs: string[];
  literals: string[];
}

/** The exported interfaces of src/client.ts, parsed with the TypeScript compiler. */
function tsInterfaces(): Map<string, TsField[]> {
  const file = path.join(ROOT, "src", "client.ts");
  const source = ts.createSourceFile(file, fs.readFileSync(file, "utf8"), ts.ScriptTarget.ES2022, true);
  const out = new Map<string, TsField[]>();
  const walkType = (node: ts.TypeNode, field: TsField) => {
    if (ts.isTypeReferenceNode(node)) field.refs.push(node.typeName.getText(source));
    if (ts.isLiteralTypeNode(node) && ts.isStringLiteral(node.literal)) field.literals.push(node.literal.text);
    ts.forEachChild(node, (child) => {
      if (ts.isTypeNode(child)) walkType(child, field);
    });
  };
  source.forEachChild((node) => {
    if (!ts.isInterfaceDeclaration(node) || !node.modifiers?.some((m) => m.kind === ts.SyntaxKind.ExportKeyword)) return;
    if (NOT_WIRE.has(node.name.text)) return;
    const fields: TsField[] = [];
    for (const member of node.members) {
      if (!ts.isPropertySignature(member) || !member.type) continue;
      const field = { name: member.name.getText(source), optional: !!member.questionToken, refs: [], literals: [] };
      walkType(member.type, field);
      fields.push(field);
    }
    out.set(node.name.text, fields);
  });
  return out;
}

type Schema = Record<string, unknown>;

/** The named schemas of an OpenAPI document (or of a plain JSON Schema's definitions). */
function namedSchemas(doc: Schema): Record<string, Schema> {
  const components = (doc.components as Schema | undefined)?.schemas as Record<string, Schema> | undefined;
  return { ...(doc.definitions as object), ...(doc.$defs as object), ...components };
}

/** Walks a schema through `$ref`, `allOf`/`oneOf`/`anyOf` (and `items` when asked). */
function reach(named: Record<string, Schema>, schema: Schema, visit: (s: Schema, refName?: string) => void, intoItems: boolean, seen = new Set<Schema>()): void {
  if (!schema || typeof schema !== "object" || seen.has(schema)) return;
  seen.add(schema);
  const ref = schema.$ref;
  if (typeof ref === "string") {
    const name = ref.split("/").pop()!;
    const target = named[name];
    assert.ok(target, `the schema refers to ${ref}, which it does not define`);
    visit(target, name);
    reach(named, target, visit, intoItems, seen);
    return;
  }
  visit(schema);
  for (const key of ["allOf", "oneOf", "anyOf"]) {
    for (const s of (schema[key] as Schema[] | undefined) ?? []) reach(named, s, visit, intoItems, seen);
  }
  if (intoItems && schema.items && typeof schema.items === "object") reach(named, schema.items as Schema, visit, intoItems, seen);
}

function properties(named: Record<string, Schema>, schema: Schema): { props: Map<string, Schema>; required: Set<string> } {
  const props = new Map<string, Schema>();
  const required = new Set<string>();
  reach(named, schema, (s) => {
    for (const [k, v] of Object.entries((s.properties as Record<string, Schema>) ?? {})) props.set(k, v);
    for (const k of (s.required as string[]) ?? []) required.add(k);
  }, false);
  return { props, required };
}

test("client.ts's wire types are docs/openapi.json's: names, fields, nested types, enum values", () => {
  assert.ok(fs.existsSync(OPENAPI), `${OPENAPI} is missing: it is generated from src/api/ (ENDORM_UPDATE_OPENAPI=1 cargo test --release --lib openapi)`);
  const named = namedSchemas(JSON.parse(fs.readFileSync(OPENAPI, "utf8")));
  const interfaces = tsInterfaces();
  assert.ok(interfaces.size >= 10, `found ${interfaces.size} wire interfaces in client.ts`);
  const problems: string[] = [];
  for (const [name, fields] of interfaces) {
    const schema = named[name];
    if (!schema) {
      problems.push(`${name}: no schema of that name (name the TypeScript type as src/api/ does)`);
      continue;
    }
    const { props, required } = properties(named, schema);
    for (const field of fields) {
      const prop = props.get(field.name);
      if (!prop) {
        problems.push(`${name}.${field.name}: not in the schema (fields there: ${[...props.keys()].join(", ")})`);
        continue;
      }
      if (REQUESTS.has(name) && required.has(field.name) && field.optional) {
        problems.push(`${name}.${field.name}: required by the schema, optional here`);
      }
      const refs = new Set<string>();
      const values = new Set<string>();
      reach(named, prop, (s, refName) => {
        if (refName) refs.add(refName);
        for (const v of (s.enum as unknown[]) ?? []) if (typeof v === "string") values.add(v);
        if (typeof s.const === "string") values.add(s.const);
      }, true);
      for (const ref of field.refs.filter((r) => interfaces.has(r))) {
        if (!refs.has(ref)) problems.push(`${name}.${field.name}: is a ${ref} here, the schema's is ${[...refs].join(" | ") || "inline"}`);
      }
      if (values.size > 0) {
        for (const v of field.literals) if (!values.has(v)) problems.push(`${name}.${field.name}: "${v}" is not one of the schema's ${[...values].join(", ")}`);
      }
    }
    if (CAUGHT_UP.has(name)) {
      const have = new Set(fields.map((f) => f.name));
      for (const k of props.keys()) if (!have.has(k)) problems.push(`${name}.${k}: in the schema, missing in client.ts`);
    }
  }
  assert.deepEqual(problems, []);
});
