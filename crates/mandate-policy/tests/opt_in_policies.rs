//! The opt-in policies of `tests/fixtures/opt-in` (registered builds, a
//! group rule), loaded on top of the quickstart set and tested with the
//! policy-test runner, whose `directory` section supplies groups and builds.

use mandate_policy::{PolicyEngine, run_tests};
use std::path::{Path, PathBuf};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Copies the `*.cedar` and `*.cedarschema` files of `from` into `to`.
fn copy_policies(from: &Path, to: &Path) -> Result<usize, std::io::Error> {
    let mut n = 0;
    for entry in std::fs::read_dir(from)? {
        let path = entry?.path();
        let wanted = path
            .extension()
            .is_some_and(|e| e == "cedar" || e == "cedarschema");
        if let (true, Some(name)) = (wanted, path.file_name()) {
            std::fs::copy(&path, to.join(name))?;
            n += 1;
        }
    }
    Ok(n)
}

#[test]
fn opt_in_rules_pass_their_policy_tests() -> TestResult {
    let dir = tempfile::tempdir()?;
    copy_policies(
        &manifest().join("../../examples/quickstart/policies"),
        dir.path(),
    )?;
    let fixture = manifest().join("tests/fixtures/opt-in");
    assert_eq!(copy_policies(&fixture, dir.path())?, 2);
    let engine = PolicyEngine::load_dir(dir.path())?;
    let report = run_tests(&engine, &fixture.join("tests"))?;
    assert!(report.all_passed(), "{report}");
    assert!(report.cases.len() >= 8, "{report}");
    // The file's directory applied to its cases only.
    assert!(engine.directory().builds.is_empty());
    Ok(())
}
