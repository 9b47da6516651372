//! The dependency rule of `ARCHITECTURE.md`, checked on the source itself
//! (pure: no root, no kernel). Every `use` and every path in
//! `crates/sluice/src` is parsed with `syn` and resolved to the module it
//! names:
//!
//! 1. a module may use only the layers below it (cli -> daemon -> api ->
//!    control -> capabilities -> dataplane/store/lab -> model/sys), never a
//!    module of its own layer, so capabilities do not import each other and
//!    there can be no cycle between top-level modules (checked again
//!    explicitly);
//! 2. inside a module, its files (other than the `mod.rs` that holds them
//!    together) import each other without cycles;
//! 3. only `dataplane` touches BPF objects (`aya`), only `store` opens
//!    SQLite (`rusqlite`), only `sys` and `dataplane` speak netlink, and only
//!    `containers` speaks to Docker (`bollard`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use syn::visit::Visit;

/// Top-level modules by layer: a module may use only lower layers.
const LAYERS: &[(&str, u8)] = &[
    ("cli", 6),
    ("daemon", 5),
    ("api", 4),
    ("control", 3),
    ("firewall", 2),
    ("limits", 2),
    ("forward", 2),
    ("visibility", 2),
    ("containers", 2),
    ("dataplane", 1),
    ("store", 1),
    ("lab", 1),
    ("model", 0),
    ("sys", 0),
];

/// External crates only some modules may use: (crate, modules allowed).
const CONFINED: &[(&str, &[&str])] = &[
    ("aya", &["dataplane"]),
    ("rusqlite", &["store"]),
    ("rtnetlink", &["sys", "dataplane"]),
    ("bollard", &["containers"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// One source file: its module path and what it refers to.
struct File {
    path: PathBuf,
    /// e.g. ["visibility", "decode"]; a `mod.rs` is its directory's module.
    module: Vec<String>,
    is_mod_rs: bool,
    /// Child modules declared here (`mod x;`).
    children: BTreeSet<String>,
    /// Absolute paths (without `crate`) this file refers to.
    refs: Vec<Vec<String>>,
    /// `pub use` re-exports: name -> absolute path of its target.
    reexports: BTreeMap<String, Vec<String>>,
    /// Names of the external crates it refers to.
    externs: BTreeSet<String>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn module_of(path: &Path) -> (Vec<String>, bool) {
    let rel = path.strip_prefix(src()).unwrap();
    let mut m: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    let last = m.pop().unwrap();
    let is_mod = last == "mod.rs" || last == "lib.rs" || last == "main.rs";
    if !is_mod {
        m.push(last.trim_end_matches(".rs").to_string());
    }
    (m, is_mod)
}

struct Collector<'a> {
    file: &'a mut File,
    /// Inside a `pub use`.
    public: bool,
    /// Inline modules (`mod tests { ... }`) around the current item.
    inline: Vec<String>,
}

impl Collector<'_> {
    /// The module the current item is in: the file's, plus inline modules.
    fn here(&self) -> Vec<String> {
        self.file.module.iter().chain(&self.inline).cloned().collect()
    }

    /// Resolves a path's leading segments (`crate`, `super`, `self`, a
    /// child module) to an absolute module path; None for other crates
    /// (recorded as externs: any `use` path, or a path of two or more
    /// segments in code).
    fn resolve(&mut self, segs: &[String], in_use: bool) -> Option<Vec<String>> {
        let first = segs.first()?;
        let base: Vec<String> = match first.as_str() {
            "crate" => return Some(segs[1..].to_vec()),
            "super" => {
                let mut m = self.here();
                let mut rest = segs;
                while rest.first().is_some_and(|s| s == "super") {
                    m.pop();
                    rest = &rest[1..];
                }
                return Some(m.into_iter().chain(rest.iter().cloned()).collect());
            }
            "self" => return Some(self.here().into_iter().chain(segs[1..].iter().cloned()).collect()),
            s if self.inline.is_empty() && self.file.children.contains(s) => self.file.module.clone(),
            s => {
                if (in_use || segs.len() > 1) && s.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                    self.file.externs.insert(s.to_string());
                }
                return None;
            }
        };
        Some(base.into_iter().chain(segs.iter().cloned()).collect())
    }

    fn record(&mut self, segs: Vec<String>, rename: Option<String>, in_use: bool) {
        if let Some(abs) = self.resolve(&segs, in_use) {
            if self.public {
                let name = rename.unwrap_or_else(|| abs.last().cloned().unwrap_or_default());
                self.file.reexports.insert(name, abs.clone());
            }
            self.file.refs.push(abs);
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, t: &syn::UseTree) {
        match t {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut segs = prefix.clone();
                if n.ident != "self" {
                    segs.push(n.ident.to_string());
                }
                self.record(segs, None, true);
            }
            syn::UseTree::Rename(r) => {
                let mut segs = prefix.clone();
                if r.ident != "self" {
                    segs.push(r.ident.to_string());
                }
                self.record(segs, Some(r.rename.to_string()), true);
            }
            syn::UseTree::Glob(_) => self.record(prefix.clone(), None, true),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.public = matches!(u.vis, syn::Visibility::Public(_));
        self.use_tree(&mut Vec::new(), &u.tree);
        self.public = false;
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if m.content.is_none() {
            self.file.children.insert(m.ident.to_string());
        }
        self.inline.push(m.ident.to_string());
        syn::visit::visit_item_mod(self, m);
        self.inline.pop();
    }

    fn visit_item_extern_crate(&mut self, e: &'ast syn::ItemExternCrate) {
        self.file.externs.insert(e.ident.to_string());
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if segs.len() > 1 {
            self.record(segs, None, false);
        }
        syn::visit::visit_path(self, p);
    }
}

fn parse(path: &Path) -> File {
    let text = fs::read_to_string(path).unwrap();
    let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (module, is_mod_rs) = module_of(path);
    let mut file = File {
        path: path.to_path_buf(),
        module,
        is_mod_rs,
        children: BTreeSet::new(),
        refs: Vec::new(),
        reexports: BTreeMap::new(),
        externs: BTreeSet::new(),
    };
    // Child modules first, so `use child::X` resolves in the one pass.
    for item in &ast.items {
        if let syn::Item::Mod(m) = item {
            if m.content.is_none() {
                file.children.insert(m.ident.to_string());
            }
        }
    }
    Collector {
        file: &mut file,
        public: false,
        inline: Vec::new(),
    }
    .visit_file(&ast);
    file
}

fn files() -> Vec<File> {
    let mut paths = Vec::new();
    rust_files(&src(), &mut paths);
    paths.sort();
    paths.iter().map(|p| parse(p)).collect()
}

fn layer(m: &str) -> Option<u8> {
    LAYERS.iter().find(|(n, _)| *n == m).map(|(_, l)| *l)
}

fn rel(p: &Path) -> String {
    p.strip_prefix(src()).unwrap().display().to_string()
}

#[test]
fn every_top_level_module_has_a_layer() {
    let mut tops = BTreeSet::new();
    for f in files() {
        if let Some(t) = f.module.first() {
            tops.insert(t.clone());
        }
    }
    let missing: Vec<_> = tops.iter().filter(|t| layer(t).is_none()).collect();
    assert!(
        missing.is_empty(),
        "modules without a layer (add them to LAYERS and ARCHITECTURE.md): {missing:?}"
    );
    let lib = fs::read_to_string(src().join("lib.rs")).unwrap();
    for (m, _) in LAYERS {
        assert!(lib.contains(&format!("pub mod {m};")), "lib.rs does not declare {m}");
    }
}

#[test]
fn modules_use_only_lower_layers() {
    let mut bad = Vec::new();
    let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
    for f in files() {
        let Some(from) = f.module.first() else { continue };
        let lf = layer(from).unwrap_or(u8::MAX);
        for r in &f.refs {
            let Some(to) = r.first() else { continue };
            let Some(lt) = layer(to) else { continue };
            if to == from {
                continue;
            }
            edges.insert((from.clone(), to.clone()));
            if lt >= lf {
                bad.push(format!(
                    "{} uses {} ({} is layer {lf}, {} is layer {lt})",
                    rel(&f.path),
                    r.join("::"),
                    from,
                    to
                ));
            }
        }
    }
    bad.sort();
    bad.dedup();
    assert!(
        bad.is_empty(),
        "imports against the dependency rule:\n{}",
        bad.join("\n")
    );
    // Belt and braces: no cycle among top-level modules.
    let graph: BTreeMap<String, BTreeSet<String>> = edges.iter().fold(BTreeMap::new(), |mut g, (a, b)| {
        g.entry(a.clone()).or_default().insert(b.clone());
        g
    });
    assert_eq!(cycles(&graph), Vec::<Vec<String>>::new());
}

#[test]
fn files_within_a_module_have_no_import_cycles() {
    let all = files();
    // Re-exports of each mod.rs: module -> (name -> target path).
    let reexports: BTreeMap<Vec<String>, &BTreeMap<String, Vec<String>>> = all
        .iter()
        .filter(|f| f.is_mod_rs)
        .map(|f| (f.module.clone(), &f.reexports))
        .collect();
    let siblings: BTreeSet<Vec<String>> = all.iter().filter(|f| !f.is_mod_rs).map(|f| f.module.clone()).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in all.iter().filter(|f| !f.is_mod_rs && f.module.len() >= 2) {
        let parent = &f.module[..f.module.len() - 1];
        for r in &f.refs {
            // The sibling file a path lands in: directly, or through a
            // re-export of the parent's mod.rs.
            let mut target = None;
            if r.len() > parent.len() && r.starts_with(parent) {
                let direct = r[..parent.len() + 1].to_vec();
                if siblings.contains(&direct) {
                    target = Some(direct);
                } else if let Some(to) = reexports.get(parent).and_then(|m| m.get(&r[parent.len()])) {
                    let hop = to[..(parent.len() + 1).min(to.len())].to_vec();
                    if to.starts_with(parent) && siblings.contains(&hop) {
                        target = Some(hop);
                    }
                }
            }
            if let Some(t) = target.filter(|t| *t != f.module) {
                graph.entry(f.module.join("::")).or_default().insert(t.join("::"));
            }
        }
    }
    assert!(
        !graph.is_empty(),
        "the resolver found no sibling imports at all: it is broken"
    );
    assert_eq!(
        cycles(&graph),
        Vec::<Vec<String>>::new(),
        "sibling files import each other in a cycle"
    );
}

#[test]
fn only_their_owners_use_aya_rusqlite_and_netlink() {
    let mut bad = Vec::new();
    for f in files() {
        let top = f.module.first().map(String::as_str).unwrap_or("");
        for (krate, allowed) in CONFINED {
            if f.externs.contains(*krate) && !allowed.contains(&top) {
                bad.push(format!("{} uses {krate} (only {allowed:?} may)", rel(&f.path)));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Every strongly connected component with more than one node (Tarjan).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> T<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on.insert(v);
            for w in self.g.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.on.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(w);
                    scc.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    scc.sort();
                    self.out.push(scc);
                }
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

#[test]
fn the_checker_catches_what_it_claims() {
    // A cycle and a clean graph, so a broken cycle finder cannot pass.
    let g = |edges: &[(&str, &str)]| {
        edges
            .iter()
            .fold(BTreeMap::<String, BTreeSet<String>>::new(), |mut g, (a, b)| {
                g.entry(a.to_string()).or_default().insert(b.to_string());
                g
            })
    };
    assert_eq!(
        cycles(&g(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])),
        vec![vec!["a", "b", "c"]]
    );
    assert!(cycles(&g(&[("a", "b"), ("b", "c"), ("a", "c")])).is_empty());
    // The resolver sees a real cross-capability import in a crafted file.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.rs");
    fs::write(
        &p,
        "use crate::{limits::Limiter, firewall::{self, Firewall}};\nfn f() { super::super::forward::x(); }\n",
    )
    .unwrap();
    let text = fs::read_to_string(&p).unwrap();
    let ast = syn::parse_file(&text).unwrap();
    let mut file = File {
        path: p,
        module: vec!["firewall".into(), "x".into()],
        is_mod_rs: false,
        children: BTreeSet::new(),
        refs: Vec::new(),
        reexports: BTreeMap::new(),
        externs: BTreeSet::new(),
    };
    Collector {
        file: &mut file,
        public: false,
        inline: Vec::new(),
    }
    .visit_file(&ast);
    let tops: BTreeSet<&str> = file.refs.iter().filter_map(|r| r.first().map(String::as_str)).collect();
    assert_eq!(tops, BTreeSet::from(["firewall", "forward", "limits"]));
    // Every way of naming a confined crate is seen, and `super` inside an
    // inline module is that module's parent.
    let text =
        "use aya as bpf;\nuse rusqlite::*;\nextern crate rtnetlink;\nmod tests { use super::super::store::X; }\n";
    let ast = syn::parse_file(text).unwrap();
    file.refs.clear();
    Collector {
        file: &mut file,
        public: false,
        inline: Vec::new(),
    }
    .visit_file(&ast);
    for k in ["aya", "rusqlite", "rtnetlink"] {
        assert!(file.externs.contains(k), "{k} not seen: {:?}", file.externs);
    }
    assert_eq!(
        file.refs,
        vec![vec!["firewall".to_string(), "store".into(), "X".into()]]
    );
}
