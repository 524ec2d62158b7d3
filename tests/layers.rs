//! The module layering of docs/architecture.md, checked: every module of
//! `src/` (the binaries under `src/bin` excepted) is in one layer of the
//! fenced `layers` block there, and imports only from layers below its own
//! (`crate::x` paths, `use crate::{x, ..}` groups, and `super::` resolved to
//! the module it names; unit tests, `#[cfg(test)]`, excepted). Imports
//! within a layer are refused too, so a cycle between modules cannot pass. Also: metric names are spelled only in
//! `src/telemetry.rs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The written order: module → layer number (0 = lowest).
fn layers() -> HashMap<String, usize> {
    let doc =
        std::fs::read_to_string(root().join("docs/architecture.md")).expect("architecture.md");
    let block = doc
        .split("```layers\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a ```layers block in docs/architecture.md");
    let mut out = HashMap::new();
    for (i, line) in block.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        for name in line.trim().trim_start_matches('<').split(',') {
            let name = name.trim();
            assert!(
                out.insert(name.to_string(), i).is_none(),
                "{name} is in two layers"
            );
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "bin") {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file: `src/engine/redis/ingest.rs` → engine, redis, ingest.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root().join("src")).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts
}

/// Code without comments and string literals (their text is not an import).
fn code_only(src: &str) -> String {
    let mut out: Vec<u8> = Vec::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3; // a char literal such as '{'
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') {
            i += 3; // an escaped char literal such as '\''
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.extend_from_slice(b"\"\"");
        } else if b[i..].starts_with(b"r#\"") {
            i += 3;
            while i < b.len() && !b[i..].starts_with(b"\"#") {
                i += 1;
            }
            i += 2;
        } else if b[i..].starts_with(b"#[cfg(test)]") {
            // A unit test may use any module: skip the item it marks.
            i += 12;
            let mut depth = 0;
            while i < b.len() {
                match b[i] {
                    b'{' => depth += 1,
                    b'}' if depth == 1 => break,
                    b'}' => depth -= 1,
                    b';' if depth == 0 => break,
                    _ => {}
                }
                i += 1;
            }
            i += 1;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every top-level module a file refers to, with the text that does.
fn imports(file: &Path) -> Vec<(String, String)> {
    let src = code_only(&std::fs::read_to_string(file).expect("read"));
    let base = module_of(file);
    // Inline modules (`mod tests {`) nest the path `super::` starts from.
    let mut stack: Vec<(usize, usize)> = Vec::new(); // (depth at open, path len)
    let mut path = base.clone();
    let mut depth = 0usize;
    let mut out = Vec::new();
    let bytes = src.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    for i in 0..bytes.len() {
        match bytes[i] {
            b'{' => depth += 1,
            b'}' => {
                depth = depth.saturating_sub(1);
                while stack.last().is_some_and(|(d, _)| *d == depth) {
                    let (_, len) = stack.pop().expect("open");
                    path.truncate(len);
                }
            }
            _ => {}
        }
        if (i > 0 && ident(bytes[i - 1])) || !src.is_char_boundary(i) {
            continue;
        }
        let rest = &src[i..];
        if let Some(declared) = rest.strip_prefix("mod ") {
            let name: String = declared
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let after = declared[name.len()..].trim_start();
            if after.starts_with('{') {
                stack.push((depth, path.len()));
                path.push(name);
            }
        }
        if rest.starts_with("crate::") || rest.starts_with("super::") {
            let mut target: Vec<String> = Vec::new();
            let mut r = rest;
            if r.starts_with("crate::") {
                r = &r[7..];
            } else {
                target = path.clone();
                while let Some(s) = r.strip_prefix("super::") {
                    target.pop();
                    r = s;
                }
            }
            let names: Vec<String> = if target.is_empty() {
                if let Some(group) = r.strip_prefix('{') {
                    // `use crate::{a::b, c};`: the first segment of each item.
                    let mut nest = 0;
                    let end = group
                        .char_indices()
                        .find(|(_, c)| {
                            match c {
                                '{' => nest += 1,
                                '}' if nest == 0 => return true,
                                '}' => nest -= 1,
                                _ => {}
                            }
                            false
                        })
                        .map_or(group.len(), |(i, _)| i);
                    let mut nest = 0;
                    group[..end]
                        .split(|c| {
                            match c {
                                '{' => nest += 1,
                                '}' => nest -= 1,
                                ',' if nest == 0 => return true,
                                _ => {}
                            }
                            false
                        })
                        .map(|item| {
                            item.trim()
                                .chars()
                                .take_while(|c| c.is_alphanumeric() || *c == '_')
                                .collect()
                        })
                        .filter(|n: &String| !n.is_empty())
                        .collect()
                } else {
                    vec![r
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect()]
                }
            } else {
                vec![target[0].clone()]
            };
            let shown: String = rest
                .chars()
                .take_while(|c| *c != ';' && *c != '\n')
                .collect();
            for n in names {
                out.push((n, shown.clone()));
            }
        }
    }
    out
}

#[test]
fn imports_follow_the_written_layer_order() {
    let order = layers();
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for f in &files {
        let module = module_of(f);
        let Some(top) = module.first() else {
            continue; // lib.rs: declares the modules and re-exports
        };
        let Some(&own) = order.get(top) else {
            wrong.push(format!("{}: module `{top}` is in no layer", f.display()));
            continue;
        };
        for (to, text) in imports(f) {
            if &to == top || to == "self" {
                continue;
            }
            match order.get(&to) {
                Some(&l) if l < own => {}
                Some(&l) => wrong.push(format!(
                    "{}: `{text}`: `{top}` (layer {own}) imports `{to}` (layer {l}); only lower layers may be imported",
                    f.display()
                )),
                None if to.chars().next().is_some_and(char::is_uppercase) => {}
                None => wrong.push(format!(
                    "{}: `{text}`: `{to}` is in no layer",
                    f.display()
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn metric_names_are_spelled_only_in_telemetry() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let spelled: Vec<String> = files
        .iter()
        .filter(|f| !f.ends_with("telemetry.rs"))
        .filter(|f| {
            std::fs::read_to_string(f)
                .expect("read")
                .contains("\"mythos_")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        spelled.is_empty(),
        "metric names outside src/telemetry.rs: {spelled:?}"
    );
}
