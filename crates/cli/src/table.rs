//! The listings' tables (comfy-table): a header row, columns two spaces
//! apart, no borders, so that a line splits on whitespace into its
//! fields (scripts use `--json` all the same).

use comfy_table::{CellAlignment, ContentArrangement, Table};

/// A table with `header` for its first row.
pub fn new(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(comfy_table::presets::NOTHING);
    // A listing's lines stay whole (a pipe has no width; a terminal
    // wraps them itself).
    t.set_content_arrangement(ContentArrangement::Disabled);
    t.set_header(header.to_vec());
    t
}

/// Aligns the numbers of column `index` to the right.
pub fn right(t: &mut Table, index: usize) {
    if let Some(c) = t.column_mut(index) {
        c.set_cell_alignment(CellAlignment::Right);
    }
}

/// The table's lines, without padding before the first column or after
/// the last.
pub fn render(mut t: Table) -> String {
    let n = t.column_count();
    for (i, c) in t.column_iter_mut().enumerate() {
        c.set_padding((0, if i + 1 < n { 2 } else { 0 }));
    }
    t.trim_fmt()
}

/// Prints the table on stdout.
pub fn print(t: Table) {
    println!("{}", render(t));
}

/// `s` with its line breaks and tabs written as `\n`, `\r`, `\t`, so
/// that a row stays one line (a command given to `sh -c` often has some).
pub fn one_line(s: &str) -> String {
    s.replace('\n', "\\n").replace('\r', "\\r").replace('\t', "\\t")
}

/// A byte count as `sort -h` reads it: 512.0M, 1.5G.
pub fn bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec_short().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_rows_line_up_two_spaces_apart() {
        let mut t = new(&["NAME", "HOST", "MEMORY"]);
        t.add_row(vec!["web", "h1", &bytes(512 << 20)]);
        t.add_row(vec!["database", "h22", &bytes(3 << 29)]);
        right(&mut t, 2);
        let out = render(t);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(one_line("a\nb\tc"), "a\\nb\\tc");
        assert_eq!(lines, ["NAME      HOST  MEMORY", "web       h1    512.0M", "database  h22     1.5G"], "{out}");
    }
}
