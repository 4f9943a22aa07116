//! The crate's modules import one another in one direction only: no module
//! imports one that imports it back, directly or through others. A module
//! is a top-level file or folder of `src/` (`store.rs` with `store/` is
//! one); what it imports is every `crate::NAME` its files name outside
//! comments and test modules (a name the crate root re-exports counts as
//! its module). ARCHITECTURE.md lists the modules in the order this keeps,
//! and the test checks that it does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each module and the modules it imports.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_owned();
            match name.strip_suffix(".rs") {
                Some(stem) => Some(stem.to_owned()),
                None => p.is_dir().then_some(name),
            }
        })
        .filter(|m| m != "lib" && m != "bin")
        .collect();
    let root = root_names(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = Vec::new();
    collect(src, &mut files);
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let first = relative.components().next().unwrap();
        let first = first.as_os_str().to_str().unwrap();
        let module = first.strip_suffix(".rs").unwrap_or(first).to_owned();
        if !modules.contains(&module) {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        let named = graph.entry(module.clone()).or_default();
        for name in crate_paths(&code) {
            // A name the crate root re-exports ties to its module.
            let name = root.get(&name).cloned().unwrap_or(name);
            if name != module && modules.contains(&name) {
                named.insert(name);
            }
        }
    }
    graph
}

/// The names `lib.rs` re-exports at the crate root (`pub use m::X;`,
/// `pub use m::{X, Y};`), each with the module it comes from: `crate::X`
/// in a module ties it to `m`.
fn root_names(lib: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for line in code_of(lib).lines() {
        let Some(path) = line.strip_prefix("pub use ") else {
            continue;
        };
        let path = path.trim_end_matches(';');
        let Some((module, rest)) = path.split_once("::") else {
            continue;
        };
        let last = rest.rsplit("::").next().unwrap_or(rest);
        for name in last.trim_matches(|c| c == '{' || c == '}').split(',') {
            let name = name.trim();
            if !name.is_empty() {
                names.insert(name.to_owned(), module.to_owned());
            }
        }
    }
    names
}

/// The modules ARCHITECTURE.md lists under "Modules, from the ground up",
/// each with its place: an item that starts with a module places it
/// (`- \`store/\`: ...`); the files an item names otherwise (the helpers
/// item, or `on_demand.rs` inside `events/`) place only modules no item
/// starts with.
fn listed_order(architecture: &str) -> BTreeMap<String, usize> {
    let section = architecture
        .split("## Modules, from the ground up")
        .nth(1)
        .expect("ARCHITECTURE.md lists the modules");
    let section = section.split("\n## ").next().unwrap_or(section);
    let module = |quoted: &str| {
        let name = quoted
            .strip_suffix(".rs")
            .or_else(|| quoted.strip_suffix('/'))?;
        name.chars()
            .all(|c| c.is_ascii_lowercase() || c == '_')
            .then(|| name.to_owned())
    };
    let mut items: Vec<String> = Vec::new();
    for line in section.lines() {
        match line.strip_prefix("- ") {
            Some(item) => items.push(item.to_owned()),
            None => {
                if let Some(item) = items.last_mut() {
                    item.push_str(line);
                }
            }
        }
    }
    let mut places = BTreeMap::new();
    for (place, item) in items.iter().enumerate() {
        let lead = item
            .strip_prefix('`')
            .and_then(|rest| rest.split('`').next());
        if let Some(name) = lead.and_then(module) {
            places.insert(name, place + 1);
        }
    }
    for (place, item) in items.iter().enumerate() {
        for name in item.split('`').skip(1).step_by(2).filter_map(module) {
            places.entry(name).or_insert(place + 1);
        }
    }
    places
}

fn collect(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// `source` without its comments and its `#[cfg(test)] mod tests`.
fn code_of(source: &str) -> String {
    let source = match source.find("#[cfg(test)]\nmod tests") {
        Some(at) => &source[..at],
        None => source,
    };
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first segment of every `crate::` path in `code`, braces included
/// (`use crate::{a, b::c}` names `a` and `b`).
fn crate_paths(code: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(list) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = true;
            for (i, c) in list.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start && depth == 0 => {
                        names.push(ident(&list[i..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            names.push(ident(rest));
        }
    }
    names
}

/// A cycle through `graph`, if there is one (as the modules along it).
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        at: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|m| m == at) {
            let mut found = path[start..].to_vec();
            found.push(at.to_owned());
            return Some(found);
        }
        if !done.insert(at.to_owned()) {
            return None;
        }
        path.push(at.to_owned());
        for next in graph.get(at).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|start| visit(start, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = imports(&src);
    assert!(graph.len() > 10, "{graph:?}");
    if let Some(found) = cycle(&graph) {
        panic!("modules import each other: {}", found.join(" -> "));
    }
}

/// ARCHITECTURE.md is true to the tree: it lists every module, and each
/// imports only modules listed before it (or in the same item).
#[test]
fn architecture_md_lists_every_module_in_import_order() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let graph = imports(&root.join("src"));
    let places = listed_order(&std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap());
    let unlisted: Vec<_> = graph.keys().filter(|m| !places.contains_key(*m)).collect();
    assert!(unlisted.is_empty(), "not in ARCHITECTURE.md: {unlisted:?}");
    let mut upward = Vec::new();
    for (module, imported) in &graph {
        for other in imported {
            if places[other] > places[module] {
                upward.push(format!("{module} -> {other}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports of modules listed after: {upward:?}"
    );
}

#[test]
fn the_check_finds_a_cycle_and_reads_braced_imports() {
    let code = code_of("use crate::{a::X, b};\n// crate::c\nfn f() { crate::d::g() }");
    assert_eq!(crate_paths(&code), ["a", "b", "d"]);
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(m, to)| (m.to_owned(), to.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
    let root = root_names("pub use a::X;\npub use b::c::{Y, Z};\npub use tokio;");
    assert_eq!(root["X"], "a");
    assert_eq!((&root["Y"], &root["Z"]), (&"b".to_owned(), &"b".to_owned()));
    let places = listed_order(
        "## Modules, from the ground up\n\n- Helpers: `a.rs`, `b/`\n- `c.rs`: its `e.rs`\n  \
         and `b.rs`\n- `e.rs`\n\n## Next\n- `d.rs`",
    );
    assert_eq!(
        (places["a"], places["b"], places["c"], places["e"]),
        (1, 1, 2, 3)
    );
    assert!(!places.contains_key("d"));
}
