// The API reference: the daemon's own /openapi.json, rendered as text: each route with its request
// and response schema, then every schema with its fields. `code` in descriptions becomes <code>.

import { el } from "/web/lens.js";

/** A description with its `backquoted` parts as code, each part a text node. */
function prose(text) {
  if (!text) return null;
  const parts = String(text).split("`");
  return el("p", { class: "desc" }, parts.map((part, i) => (i % 2 ? el("code", {}, part) : part)));
}

function refName(ref) {
  return ref.slice(ref.lastIndexOf("/") + 1);
}

function schemaLink(name) {
  const button = el("button", { type: "button", class: "link", "data-schema": name }, name);
  return button;
}

/** A schema's type in a few words, with named schemas as links. */
function typeOf(schema) {
  if (!schema || typeof schema !== "object") return ["any"];
  if (schema.$ref) return [schemaLink(refName(schema.$ref))];
  const alternatives = schema.oneOf ?? schema.anyOf;
  if (alternatives) return join(alternatives.map(typeOf), " | ");
  if (schema.enum) return [schema.enum.map((v) => JSON.stringify(v)).join(" | ")];
  const types = Array.isArray(schema.type) ? schema.type : schema.type ? [schema.type] : [];
  if (!types.length) return [schema.properties ? "object" : "any"];
  return join(types.map((t) => (t === "array" ? ["[", ...typeOf(schema.items), "]"] : [t])), " | ");
}

function join(lists, separator) {
  return lists.flatMap((list, i) => (i ? [separator, ...list] : list));
}

function fieldsTable(schema) {
  const properties = schema.properties ?? {};
  const required = new Set(schema.required ?? []);
  const rows = Object.entries(properties).map(([name, field]) => {
    const inner = (field.oneOf ?? []).find((f) => f.description);
    return el("tr", {},
      el("td", {}, el("code", {}, name), required.has(name) ? el("span", { class: "req" }, " required") : null),
      el("td", {}, typeOf(field)),
      el("td", {}, prose(field.description ?? inner?.description)));
  });
  if (!rows.length) return el("p", { class: "desc" }, "Type: ", typeOf(schema));
  return el("table", { class: "fields" },
    el("thead", {}, el("tr", {}, el("th", {}, "field"), el("th", {}, "type"), el("th", {}, "meaning"))),
    el("tbody", {}, rows));
}

function bodySchema(content) {
  const [media, body] = Object.entries(content ?? {})[0] ?? [];
  if (!media) return null;
  return el("p", { class: "body" }, el("span", { class: "media" }, media), " ", typeOf(body.schema));
}

/** Renders the OpenAPI document `doc` into `root`. */
export function renderReference(root, doc) {
  const schemas = doc.components?.schemas ?? {};
  const routes = Object.entries(doc.paths ?? {}).flatMap(([path, item]) =>
    Object.entries(item).map(([method, op]) => {
      const ok = op.responses?.["200"];
      return el("details", { class: "route", "data-path": path },
        el("summary", {}, el("span", { class: "method" }, method.toUpperCase()), " ", el("code", {}, path), " — ", op.summary ?? ""),
        op.requestBody ? [el("h4", {}, "Request"), bodySchema(op.requestBody.content)] : el("p", { class: "desc" }, "No request body."),
        el("h4", {}, "Response"), bodySchema(ok?.content) ?? el("p", { class: "desc" }, ok?.description ?? ""),
        el("p", { class: "desc" }, "Errors (4XX, 5XX): ", schemaLink("ErrorBody")));
    }));
  const sections = Object.entries(schemas).map(([name, schema]) =>
    el("details", { class: "schema", id: `schema-${name}` },
      el("summary", {}, el("code", {}, name)),
      prose(schema.description),
      fieldsTable(schema)));
  root.replaceChildren(
    el("h2", {}, `${doc.info?.title ?? "API"} ${doc.info?.version ?? ""}`),
    prose(doc.info?.description) ?? "",
    el("p", { class: "desc" }, "From this daemon's ", el("code", {}, "GET /openapi.json"), ` (OpenAPI ${doc.openapi ?? "?"}); docs/API.md explains every field.`),
    el("h3", {}, "Routes"), ...routes,
    el("h3", {}, "Schemas"), ...sections);
  root.addEventListener("click", (event) => {
    const name = event.target instanceof Element ? event.target.closest("[data-schema]")?.dataset.schema : null;
    const target = name ? document.getElementById(`schema-${name}`) : null;
    if (!target) return;
    target.open = true;
    target.scrollIntoView({ block: "start" });
    target.querySelector("summary")?.focus();
  });
}
