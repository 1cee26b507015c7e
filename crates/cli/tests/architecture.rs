//! The machine-checkable invariants of ARCHITECTURE.md, held by a test so that the document
//! cannot drift from the code: read from `cargo metadata` (the resolved dependency graph,
//! normal dependencies only: tests and benches may use anything) and from the sources.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Crates that do IO: none may be in the domain's dependency tree.
const IO_CRATES: &[&str] = &[
    "tokio",
    "mio",
    "async-std",
    "rusqlite",
    "libsqlite3-sys",
    "kurrentdb",
    "tonic",
    "tokio-postgres",
    "postgres",
    "sqlx",
    "axum",
    "hyper",
    "reqwest",
];

/// Database clients: only the store adapters, the projector for its SQLite view files and the
/// alerts projector for its SQLite outbox may depend on one directly.
const DATABASE_CLIENTS: &[&str] = &[
    "rusqlite",
    "kurrentdb",
    "tokio-postgres",
    "postgres",
    "deadpool-postgres",
    "sqlx",
];

/// The concrete stores and read side the service must not name.
const ADAPTERS: &[&str] = &[
    "ledger-store-sqlite",
    "ledger-store-esdb",
    "ledger-store-postgres",
    "ledger-projector",
    "ledger-alerts",
];

/// The longest a source file under a `src/` folder may be, in lines: about 600.
const SOURCE_LINES_MAX: usize = 620;

struct Workspace {
    root: PathBuf,
    /// Package id → its JSON in the metadata.
    packages: BTreeMap<String, Value>,
    /// Package id → the ids of its normal (non-dev, non-build) dependencies.
    normal_deps: BTreeMap<String, Vec<String>>,
    members: Vec<String>,
}

/// The platform this test was built for, as rustc names it.
fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .trim()
        .to_string()
}

impl Workspace {
    fn load() -> Workspace {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // Offline, a fresh machine has only the crates this platform builds: without the
        // filter, cargo wants the manifests of every platform's dependencies (android, wasm)
        // and fails. This platform's tree is also the one the rules are about.
        let output = Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--offline"])
            .args(["--filter-platform", &host_triple()])
            .arg("--manifest-path")
            .arg(&manifest)
            .output()
            .expect("run cargo metadata");
        assert!(
            output.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata JSON");
        let packages = metadata["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .map(|package| (text(&package["id"]), package.clone()))
            .collect();
        let normal_deps = metadata["resolve"]["nodes"]
            .as_array()
            .expect("resolve nodes")
            .iter()
            .map(|node| {
                let deps = node["deps"]
                    .as_array()
                    .expect("deps")
                    .iter()
                    .filter(|dep| is_normal(dep))
                    .map(|dep| text(&dep["pkg"]))
                    .collect();
                (text(&node["id"]), deps)
            })
            .collect();
        Workspace {
            root: PathBuf::from(text(&metadata["workspace_root"])),
            packages,
            normal_deps,
            members: metadata["workspace_members"]
                .as_array()
                .expect("members")
                .iter()
                .map(text)
                .collect(),
        }
    }

    fn name(&self, id: &str) -> String {
        text(&self.packages[id]["name"])
    }

    fn member(&self, name: &str) -> String {
        self.members
            .iter()
            .find(|id| self.name(id) == name)
            .unwrap_or_else(|| panic!("{name} is a workspace member"))
            .clone()
    }

    /// Names of `id`'s direct normal dependencies.
    fn direct(&self, id: &str) -> BTreeSet<String> {
        self.normal_deps[id]
            .iter()
            .map(|dep| self.name(dep))
            .collect()
    }

    /// Names of everything `id` depends on, transitively, through normal dependencies.
    fn tree(&self, id: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut names = BTreeSet::new();
        let mut todo = vec![id.to_string()];
        while let Some(next) = todo.pop() {
            for dep in &self.normal_deps[&next] {
                if seen.insert(dep.clone()) {
                    names.insert(self.name(dep));
                    todo.push(dep.clone());
                }
            }
        }
        names
    }

    /// The binary targets of a member.
    fn binaries(&self, id: &str) -> Vec<String> {
        self.packages[id]["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .filter(|target| {
                target["kind"]
                    .as_array()
                    .is_some_and(|kinds| kinds.iter().any(|kind| kind == "bin"))
            })
            .map(|target| text(&target["name"]))
            .collect()
    }
}

/// Whether a resolved dependency is a normal one for some target (not only dev or build).
fn is_normal(dep: &Value) -> bool {
    dep["dep_kinds"]
        .as_array()
        .expect("dep_kinds")
        .iter()
        .any(|kind| kind["kind"].is_null())
}

fn text(value: &Value) -> String {
    value.as_str().expect("a string").to_string()
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        if path.is_dir() {
            let entries = std::fs::read_dir(&path).expect("read a source folder");
            todo.extend(entries.map(|entry| entry.expect("a folder entry").path()));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
    found
}

#[test]
fn the_domain_has_no_io_crate_and_no_workspace_crate_in_its_dependency_tree() {
    let workspace = Workspace::load();
    let tree = workspace.tree(&workspace.member("ledger-domain"));
    let io: Vec<&str> = IO_CRATES
        .iter()
        .copied()
        .filter(|name| tree.contains(*name))
        .collect();
    assert!(io.is_empty(), "ledger-domain depends on IO crates: {io:?}");
    let ours: Vec<&String> = tree
        .iter()
        .filter(|name| name.starts_with("ledger-"))
        .collect();
    assert!(ours.is_empty(), "ledger-domain depends on {ours:?}");
}

#[test]
fn only_the_cli_has_a_binary() {
    let workspace = Workspace::load();
    for id in &workspace.members {
        let name = workspace.name(id);
        let binaries = workspace.binaries(id);
        if name == "ledger-cli" {
            assert_eq!(binaries, ["ledger"], "the CLI's one binary");
        } else {
            assert!(
                binaries.is_empty(),
                "{name} has binaries {binaries:?}: only the CLI has a main"
            );
        }
    }
}

#[test]
fn only_store_adapters_and_the_projector_depend_on_a_database_client() {
    let workspace = Workspace::load();
    for id in &workspace.members {
        let name = workspace.name(id);
        let direct = workspace.direct(id);
        let clients: Vec<&str> = DATABASE_CLIENTS
            .iter()
            .copied()
            .filter(|client| direct.contains(*client))
            .collect();
        // The projector keeps its own view files in SQLite; it reads events only through
        // the store trait.
        let allowed = name.starts_with("ledger-store-")
            || name == "ledger-projector"
            || name == "ledger-alerts";
        assert!(
            clients.is_empty() || allowed,
            "{name} depends on database clients {clients:?}"
        );
    }
}

#[test]
fn the_service_names_no_adapter_and_no_concrete_read_side() {
    let workspace = Workspace::load();
    let tree = workspace.tree(&workspace.member("ledger-service"));
    for adapter in ADAPTERS {
        assert!(
            !tree.contains(*adapter),
            "ledger-service depends on {adapter}"
        );
    }
    // Unit tests (a `tests.rs` module, or what follows `#[cfg(test)]`) may use an adapter
    // as a dev-dependency; the library code may not.
    for path in rust_files(&workspace.root.join("crates/service/src")) {
        if path.file_name().is_some_and(|name| name == "tests.rs") {
            continue;
        }
        let whole = std::fs::read_to_string(&path).expect("read a source file");
        let source = whole.split("#[cfg(test)]").next().unwrap_or_default();
        for adapter in ADAPTERS {
            let ident = adapter.replace('-', "_");
            assert!(!source.contains(&ident), "{} names {ident}", path.display());
        }
    }
}

#[test]
fn no_source_file_is_much_longer_than_600_lines() {
    let workspace = Workspace::load();
    // The crates of this document's code map (an adapter added later joins the list when it
    // lands).
    let crates = [
        "crates/domain",
        "crates/store",
        "crates/store-sqlite",
        "crates/store-esdb",
        "crates/service",
        "crates/cli",
        "crates/projector",
        "crates/alerts",
        "projections/balance",
        "projections/trial-usage",
        "projections/tier",
    ];
    for krate in crates {
        for path in rust_files(&workspace.root.join(krate).join("src")) {
            let lines = std::fs::read_to_string(&path)
                .expect("read a source file")
                .lines()
                .count();
            assert!(
                lines <= SOURCE_LINES_MAX,
                "{} has {lines} lines (at most {SOURCE_LINES_MAX})",
                path.display()
            );
        }
    }
}
