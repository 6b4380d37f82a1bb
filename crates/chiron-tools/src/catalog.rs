//! Loading every package under the configured directories into one catalog of tool names.
//! A broken package is reported and skipped; the others load. Two packages claiming the same
//! MCP tool name (or the same package name) are a load error for the later one, in path order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::manifest::{load_manifest, ManifestError, ToolDecl, ToolPackage, MANIFEST_FILE};

/// One tool in the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolEntry {
    /// The package's name (key into [`LoadReport::packages`]).
    pub package: String,
    /// The tool's declaration.
    pub tool: ToolDecl,
}

/// What loading found.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Valid packages by name.
    pub packages: BTreeMap<String, ToolPackage>,
    /// Declared tools by MCP name (`<package>_<tool>`).
    pub tools: BTreeMap<String, ToolEntry>,
    /// Every problem, each naming its file.
    pub errors: Vec<ManifestError>,
}

/// The package folders under `dir`: `dir` itself if it holds a manifest, else its immediate
/// subfolders that do, in name order.
pub fn package_dirs(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    if dir.join(MANIFEST_FILE).is_file() {
        return Ok(vec![dir.to_owned()]);
    }
    let entries = std::fs::read_dir(dir).map_err(|err| ManifestError {
        file: dir.to_owned(),
        line: None,
        field: String::new(),
        message: format!("cannot read tool directory: {err}"),
    })?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.join(MANIFEST_FILE).is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// Loads every package under `dirs`.
pub fn load_packages(dirs: &[PathBuf]) -> LoadReport {
    let mut report = LoadReport::default();
    for dir in dirs {
        let package_dirs = match package_dirs(dir) {
            Ok(found) => found,
            Err(err) => {
                report.errors.push(err);
                continue;
            }
        };
        for package_dir in package_dirs {
            match load_manifest(&package_dir) {
                Ok(package) => add_package(&mut report, package),
                Err(errors) => report.errors.extend(errors),
            }
        }
    }
    report
}

fn add_package(report: &mut LoadReport, package: ToolPackage) {
    let file = package.dir.join(MANIFEST_FILE);
    if let Some(existing) = report.packages.get(&package.name) {
        report.errors.push(ManifestError {
            file,
            line: None,
            field: "name".into(),
            message: format!(
                "package `{}` is already loaded from {}",
                package.name,
                existing.dir.display()
            ),
        });
        return;
    }
    let names: Vec<String> = package
        .tools
        .iter()
        .map(|t| format!("{}_{}", package.name, t.name))
        .collect();
    if let Some((name, owner)) = names
        .iter()
        .find_map(|n| report.tools.get(n).map(|e| (n, e.package.clone())))
    {
        report.errors.push(ManifestError {
            file,
            line: None,
            field: "tools".into(),
            message: format!("tool name `{name}` collides with package `{owner}`; package skipped"),
        });
        return;
    }
    for (name, tool) in names.into_iter().zip(&package.tools) {
        report.tools.insert(
            name,
            ToolEntry {
                package: package.name.clone(),
                tool: tool.clone(),
            },
        );
    }
    report.packages.insert(package.name.clone(), package);
}

impl LoadReport {
    /// Adds the tools an `mcp-stdio` package's server reported. A tool whose MCP name is
    /// invalid or taken by another package rejects the whole package, like a collision at load.
    pub fn add_discovered(&mut self, package: &str, tools: Vec<ToolDecl>) {
        let Some(loaded) = self.packages.get(package) else {
            return;
        };
        let mut problem = None;
        for tool in &tools {
            let name = format!("{package}_{}", tool.name);
            if !crate::manifest::valid_tool_name(&name) {
                problem = Some(format!(
                    "the server's tool `{}` gives the MCP name `{name}`, which does not match ^[A-Za-z0-9_-]{{1,64}}$",
                    tool.name
                ));
            } else if let Some(owner) = self.tools.get(&name).map(|e| e.package.clone()) {
                problem = Some(format!(
                    "tool name `{name}` collides with package `{owner}`; package skipped"
                ));
            }
            if problem.is_some() {
                break;
            }
        }
        if let Some(message) = problem {
            let file = loaded.dir.join(MANIFEST_FILE);
            self.packages.remove(package);
            self.errors.push(ManifestError {
                file,
                line: None,
                field: "tools".into(),
                message,
            });
            return;
        }
        for tool in &tools {
            self.tools.insert(
                format!("{package}_{}", tool.name),
                ToolEntry {
                    package: package.to_owned(),
                    tool: tool.clone(),
                },
            );
        }
        if let Some(loaded) = self.packages.get_mut(package) {
            loaded.tools = tools;
        }
    }

    /// Drops a package that cannot be used (e.g. its server could not be started to discover
    /// its tools), recording why.
    pub fn reject(&mut self, package: &str, field: &str, message: String) {
        if let Some(loaded) = self.packages.remove(package) {
            self.tools.retain(|_, entry| entry.package != package);
            self.errors.push(ManifestError {
                file: loaded.dir.join(MANIFEST_FILE),
                line: None,
                field: field.into(),
                message,
            });
        }
    }
}
