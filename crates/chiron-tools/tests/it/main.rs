//! Loading packages from directories: broken ones are reported and skipped, collisions are
//! reported against the later package, and the shipped packages validate.

use std::path::{Path, PathBuf};

use chiron_tools::{load_packages, MANIFEST_FILE};

fn package(root: &Path, folder: &str, manifest: &str) {
    let dir = root.join(folder);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(MANIFEST_FILE), manifest).unwrap();
}

fn command_package(name: &str, tool: &str) -> String {
    format!(
        "name = \"{name}\"\nversion = \"1\"\nkind = \"command\"\ncommand = [\"true\"]\n\n[[tools]]\nname = \"{tool}\"\ninput_schema = {{ type = \"object\" }}\n"
    )
}

#[test]
fn a_broken_package_is_reported_and_the_rest_load() {
    let root = tempfile::tempdir().unwrap();
    package(root.path(), "a-good", &command_package("alpha", "one"));
    package(root.path(), "b-broken", "name = \"beta\"\nversion = \"1\"\nkind = \"command\"\ncommand = [\"true\"]\n[[tools]]\nname = \"two\"\ninput_schema = 5\n");
    package(root.path(), "c-good", &command_package("gamma", "three"));
    let report = load_packages(&[root.path().to_owned()]);
    assert_eq!(
        report.packages.keys().collect::<Vec<_>>(),
        ["alpha", "gamma"]
    );
    assert_eq!(
        report.tools.keys().collect::<Vec<_>>(),
        ["alpha_one", "gamma_three"]
    );
    assert_eq!(report.errors.len(), 1);
    let err = &report.errors[0];
    assert!(err.file.ends_with("b-broken/chiron-tool.toml"), "{err}");
    assert_eq!(err.line, Some(7), "{err}");
}

#[test]
fn colliding_tool_names_are_reported_for_the_later_package() {
    let root = tempfile::tempdir().unwrap();
    package(root.path(), "1", &command_package("my", "tools_list"));
    package(root.path(), "2", &command_package("my_tools", "list"));
    package(root.path(), "3", &command_package("my", "other"));
    let report = load_packages(&[root.path().to_owned()]);
    assert_eq!(report.packages.keys().collect::<Vec<_>>(), ["my"]);
    assert_eq!(report.errors.len(), 2);
    assert!(
        report.errors[0]
            .message
            .contains("`my_tools_list` collides with package `my`"),
        "{}",
        report.errors[0]
    );
    assert!(report.errors[0].file.ends_with("2/chiron-tool.toml"));
    assert!(
        report.errors[1].message.contains("already loaded"),
        "{}",
        report.errors[1]
    );
}

#[test]
fn a_missing_directory_is_an_error_not_a_crash() {
    let report = load_packages(&[PathBuf::from("/nonexistent/chiron-tools")]);
    assert!(report.packages.is_empty());
    assert!(report.errors[0]
        .message
        .contains("cannot read tool directory"));
}

#[test]
fn the_shipped_packages_validate() {
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools");
    let report = load_packages(&[shipped]);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(
        report.tools.contains_key("echo_echo"),
        "{:?}",
        report.tools.keys()
    );
}
