/**
 * Splitting a selection into the alternatives "endorm: Rerank selection" ranks (no `vscode` import).
 *
 * Rule: if the selection contains a blank line (empty or whitespace only), the alternatives are the
 * blocks between blank lines (multi-line alternatives); otherwise each non-blank line is one
 * alternative. Indentation inside an alternative is kept; line ends are normalised to `\n` inside a
 * block and restored with the document's EOL when written back.
 */

/** How a selection was split. */
export type SplitMode = "lines" | "blocks";

/** The alternatives of a selection, in selection order. */
export interface Alternatives {
  mode: SplitMode;
  items: string[];
  /** Blank lines (with their line ends) before the first alternative, kept on write-back. */
  lead: string;
  /** The line end and blank lines after the last alternative, kept on write-back. */
  trail: string;
}

const BLANK = /^[ \t]*$/;

/** Split `text` into alternatives by the rule above; empty input gives no items. */
export function splitAlternatives(text: string): Alternatives {
  const lead = /^(?:[ \t]*(?:\r\n|\n|\r))*/.exec(text)?.[0] ?? "";
  const trail = lead.length === text.length ? "" : (/(?:(?:\r\n|\n|\r)[ \t]*)*$/.exec(text)?.[0] ?? "");
  const lines = text.split(/\r\n|\n|\r/);
  // Blank lines at either end of the selection separate nothing.
  let first = 0;
  let last = lines.length - 1;
  while (first <= last && BLANK.test(lines[first])) first++;
  while (last >= first && BLANK.test(lines[last])) last--;
  const hasBlank = lines.slice(first, last + 1).some((l) => BLANK.test(l));
  if (!hasBlank) {
    return { mode: "lines", items: lines.filter((l) => !BLANK.test(l)), lead, trail };
  }
  const items: string[] = [];
  let block: string[] = [];
  for (const line of lines) {
    if (BLANK.test(line)) {
      if (block.length) items.push(block.join("\n"));
      block = [];
    } else {
      block.push(line);
    }
  }
  if (block.length) items.push(block.join("\n"));
  return { mode: "blocks", items, lead, trail };
}

/**
 * Write alternatives back in the given order: one per line (`lines`) or separated by one blank line
 * (`blocks`), with `eol` as the line end.
 */
export function joinAlternatives(items: string[], mode: SplitMode, eol = "\n"): string {
  const restored = items.map((s) => s.split("\n").join(eol));
  return restored.join(mode === "blocks" ? eol + eol : eol);
}
